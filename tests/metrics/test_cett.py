"""CETT, neuron magnitudes and the exact threshold search vs float64 numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import cett, cett_curve, neuron_magnitudes
from sparsity_jax.metrics.threshold_search import find_threshold

B, T, F, D = 8, 256, 512, 64  # 2048 tokens: "typical" for the evaluation budget
TARGETS = np.array([0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0], np.float32)


def make_data(kind, seed=0, b=B, t=T, f=F, d=D):
    """Activation scores a (b, t, f) of a gated (SiLU-gate · linear) or ReLU FFN, w_out (f, d)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, d))
    w_in = rng.standard_normal((d, f)) / np.sqrt(d)
    w_out = rng.standard_normal((f, d)) / np.sqrt(f) * rng.lognormal(0, 0.5, (f, 1))
    h = x @ w_in
    if kind == "gated":
        g = x @ (rng.standard_normal((d, f)) / np.sqrt(d))
        a = g / (1 + np.exp(-g)) * h
    elif kind == "relu":
        a = np.maximum(h + rng.normal(0, 0.3, f), 0)
    else:  # "quantized": many exactly tied magnitudes
        a = np.round(np.maximum(h, 0) * 4) / 4
        w_out = w_out / np.linalg.norm(w_out, axis=1, keepdims=True)
    return a.astype(np.float32), w_out.astype(np.float32)


def np_cett(a, w_out, mag, t, real=None):
    """Float64 CETT with the drop set taken from the float32 magnitudes `mag`."""
    a64, w64 = a.reshape(-1, a.shape[-1]).astype(np.float64), w_out.astype(np.float64)
    mag = mag.reshape(a64.shape)
    full = np.linalg.norm(a64 @ w64, axis=1)
    trunc = np.linalg.norm((a64 * (mag < t)) @ w64, axis=1)
    ok = (full > 0) if real is None else (full > 0) & real.reshape(-1)
    return float(np.mean(trunc[ok] / full[ok])) if ok.any() else 0.0


@pytest.fixture(scope="module", params=["gated", "relu"])
def data(request):
    return make_data(request.param)


def two_layers(a, w_out):
    """Layer 0: the data; layer 1: tokens reversed, a halved and w_out doubled — the same
    magnitudes and CETTs, but other proxy tokens, so the search path differs."""
    return np.stack([a, a[::-1] * 0.5]), np.stack([w_out, w_out * 2])


@pytest.fixture(scope="module")
def searched(data):
    return find_threshold(*two_layers(*data), TARGETS[None])


def test_magnitudes_and_cett_match_numpy(data):
    a, w_out = data
    mag64 = np.abs(a.astype(np.float64)) * np.linalg.norm(w_out.astype(np.float64), axis=1)
    mag = np.asarray(neuron_magnitudes(a, w_out))
    np.testing.assert_allclose(mag, mag64, rtol=1e-5, atol=1e-7)
    # Σ_i n_i reproduces the FFN output a @ w_out.
    n_NxFxD = a[0, :16, :, None].astype(np.float64) * w_out.astype(np.float64)
    np.testing.assert_allclose(n_NxFxD.sum(1), a[0, :16].astype(np.float64) @ w_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(n_NxFxD, axis=-1), mag64[0, :16], rtol=1e-6)
    thresholds = np.quantile(mag, [0.1, 0.5, 0.8, 0.95]).astype(np.float32)
    curve = cett_curve(a, w_out, thresholds)
    want = [np_cett(a, w_out, mag, t) for t in thresholds]
    np.testing.assert_allclose(curve.realised_cett, want, atol=1e-5)
    np.testing.assert_allclose(curve.sparsity, [np.mean(mag < t) for t in thresholds], atol=1e-6)
    assert float(cett(a, w_out, thresholds[1])) == pytest.approx(want[1], abs=1e-5)


def test_cett_padding_zero_tokens_and_layers(data):
    a, w_out = data
    a = a[:2, :32].copy()
    a[0, :5] = 0.0  # real tokens with a zero FFN output: left out, never NaN
    token_mask = np.ones(a.shape[:2], bool)
    token_mask[1, 20:] = False
    a_padded = a.copy()
    a_padded[1, 20:] = 1e3  # padding garbage must not matter
    mag = np.asarray(neuron_magnitudes(a, w_out))
    t = float(np.quantile(mag, 0.7))
    got = float(cett(a_padded, w_out, t, token_mask))
    assert got == pytest.approx(np_cett(a, w_out, mag, t, token_mask), abs=1e-5)
    assert float(cett(np.zeros_like(a), w_out, t)) == 0.0
    assert float(cett(a, w_out, t, np.zeros_like(token_mask))) == 0.0
    # A layer axis gives one CETT per layer, with per-layer thresholds.
    layered = cett(np.stack([a, 2 * a]), np.stack([w_out, w_out]), jnp.array([t, 2 * t]))
    np.testing.assert_allclose(layered, [np_cett(a, w_out, mag, t)] * 2, atol=1e-5)


def test_find_threshold_exact_monotone_and_budget(data, searched):
    a, w_out = data
    assert searched.threshold.shape == (2, len(TARGETS))
    r = jax.tree.map(lambda x: np.asarray(x)[0], searched)
    mag = np.asarray(neuron_magnitudes(a, w_out))
    values = np.unique(mag)
    assert np.all(np.diff(r.threshold) >= 0) and np.all(np.diff(r.realised_cett) >= 0)
    np.testing.assert_allclose(r.sparsity, [np.mean(mag < t) for t in r.threshold], atol=1e-6)
    for i, c in enumerate(TARGETS[:-1]):
        t = float(r.threshold[i])
        assert t in values
        at_t, at_next = np_cett(a, w_out, mag, t), np_cett(a, w_out, mag, values[values > t][0])
        assert at_t <= c + 1e-6 and at_next > c - 1e-6, (c, at_t, at_next)
        assert float(r.realised_cett[i]) == pytest.approx(at_t, abs=1e-6)
        assert abs(float(r.realised_cett[i]) - c) <= 1e-4
        assert int(r.evaluations[i]) <= 8
    assert float(r.realised_cett[0]) == 0.0  # target 0: only exact zeros (no contribution) dropped
    assert float(r.threshold[-1]) > mag.max() and float(r.sparsity[-1]) == 1.0 and float(r.realised_cett[-1]) == 1.0
    # Layer 1 has the same magnitudes and CETTs: the same answer from another search path.
    np.testing.assert_allclose(searched.threshold[1], r.threshold, rtol=1e-5)
    np.testing.assert_allclose(searched.realised_cett[1], r.realised_cett, atol=1e-6)


def test_find_threshold_all_zero_padding_and_bad_targets(data, searched):
    a2, w2 = two_layers(*data)
    zero = find_threshold(np.zeros_like(a2), w2, TARGETS[None])
    np.testing.assert_array_equal(zero.realised_cett, 0.0)
    np.testing.assert_array_equal(zero.sparsity, 1.0)
    assert np.all(np.asarray(zero.threshold) > 0)
    # Padding tokens (garbage values) must not influence the result.
    token_mask = np.ones(a2.shape[1:3], bool)
    token_mask[:2] = False
    garbage = a2.copy()
    garbage[:, :2] = 50.0
    padded = find_threshold(garbage, w2, TARGETS[None], token_mask)
    removed = find_threshold(a2[:, 2:], w2, TARGETS[None])
    for got, want in zip(padded, removed):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for bad in (-0.1, 1.5, float("nan"), [0.1, 2.0]):
        with pytest.raises(UserError, match="between 0 and 1"):
            find_threshold(a2, w2, bad)
    with pytest.raises(UserError, match="one target per layer"):
        find_threshold(a2, w2, TARGETS)


def test_find_threshold_small_window_per_layer_targets():
    # window=64 makes the bracketing loop (secant, bisection fallbacks, ties) do the work;
    # layer 1 has many exactly tied magnitudes; each layer has its own targets (L, K).
    layers = [make_data(kind, seed=3, b=2, t=256, f=256, d=32) for kind in ("gated", "quantized")]
    targets = np.array([[0.003, 0.05, 0.2, 0.6], [0.01, 0.1, 0.3, 0.9]], np.float32)
    r = find_threshold(np.stack([x[0] for x in layers]), np.stack([x[1] for x in layers]), targets, window=64)
    for layer, (a, w_out) in enumerate(layers):
        mag = np.asarray(neuron_magnitudes(a, w_out))
        values = np.unique(mag)
        for i, c in enumerate(targets[layer]):
            t = float(r.threshold[layer, i])
            at_t, at_next = np_cett(a, w_out, mag, t), np_cett(a, w_out, mag, values[values > t][0])
            assert at_t <= c + 1e-6 and at_next > c - 1e-6, (layer, c, at_t, at_next)
    assert np.all(np.asarray(r.evaluations) <= 40)


def test_sharded_equals_unsharded(data, searched):
    a, w_out = data
    a_NxF = a.reshape(-1, F)
    mesh = jax.make_mesh((4, 2), ("data", "tensor"))
    a_s = jax.device_put(a_NxF, NamedSharding(mesh, P("data", "tensor")))
    w_s = jax.device_put(w_out, NamedSharding(mesh, P("tensor", None)))
    got = jax.jit(find_threshold)(a_s, w_s, TARGETS)
    np.testing.assert_allclose(got.threshold, searched.threshold[0], rtol=1e-6)
    np.testing.assert_allclose(got.realised_cett, searched.realised_cett[0], atol=1e-6)
    np.testing.assert_allclose(got.sparsity, searched.sparsity[0], atol=1e-6)
    t = searched.threshold[0, 3]
    want = float(cett(a, w_out, t))
    assert float(jax.jit(cett)(a_s, w_s, t)) == pytest.approx(want, abs=1e-6)
    # Inside shard_map: tokens split over 'data', psum'd via axis_name.
    mesh1 = jax.make_mesh((8,), ("data",))
    local = jax.shard_map(functools.partial(cett, axis_name="data"), mesh=mesh1,
                          in_specs=(P("data"), P(), P()), out_specs=P())
    a_local = jax.device_put(a_NxF, NamedSharding(mesh1, P("data")))
    w_local = jax.device_put(w_out, NamedSharding(mesh1, P()))
    t_local = jax.device_put(t, NamedSharding(mesh1, P()))
    assert float(jax.jit(local)(a_local, w_local, t_local)) == pytest.approx(want, abs=1e-6)

"""FFN variants against plain numpy; the neuron decomposition; every sparsity mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.sparsify import Sparsify

D, F = 16, 48


def np_sigma(name, x, eps=0.0):
    x = x.astype(np.float64)
    return {
        "relu": lambda v: np.maximum(v, 0),
        "relu2": lambda v: np.maximum(v, 0) ** 2,
        "silu": lambda v: v / (1 + np.exp(-v)),
        "gelu": lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
        "fatrelu": lambda v: np.where(v > eps, v, 0.0),
        "swiglu": lambda v: v / (1 + np.exp(-v)),
        "reglu": lambda v: np.maximum(v, 0),
        "geglu": lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
        "fatreglu": lambda v: np.where(v > eps, v, 0.0),
        "relu2glu": lambda v: np.maximum(v, 0) ** 2,
        "drelu": lambda v: np.maximum(v, 0),
    }[name](x)


def np_ffn(ffn, x, name):
    w_in = np.asarray(ffn.w_in[...], np.float64)
    w_out = np.asarray(ffn.w_out[...], np.float64)
    x = np.asarray(x, np.float64)
    if ACTIVATIONS[name].gated:
        up = x @ w_in
        up = np.maximum(up, 0) if name == "drelu" else up  # dReLU: ReLU on the up projection too
        a = np_sigma(name, x @ np.asarray(ffn.w_gate[...], np.float64), ffn.fat_eps) * up
    else:
        a = np_sigma(name, x @ w_in, ffn.fat_eps)
    return a, a @ w_out


def make(name, **kw):
    return FFN(D, F, name, rngs=nnx.Rngs(0), fat_eps=0.1 if name in ("fatrelu", "fatreglu") else 0.0, **kw)


def rand_x(seed=1, shape=(2, 5, D)):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_ffn_matches_numpy_and_decomposition(name):
    ffn = make(name)
    x = rand_x()
    y, rec = nnx.capture(ffn, nnx.Intermediate)(x, record="both")
    a_np, y_np = np_ffn(ffn, x, name)
    np.testing.assert_allclose(np.asarray(y), y_np, atol=1e-5, rtol=1e-5)
    scores, mask = rec["scores"].get_value()[0], rec["mask"].get_value()[0]
    assert scores.shape == (2, 5, F) and scores.dtype == jnp.float32
    assert mask.shape == (2, 5, F) and mask.dtype == jnp.bool_
    np.testing.assert_allclose(np.asarray(scores), a_np, atol=1e-5, rtol=1e-5)
    # Σ_i n_i = a @ W_out reproduces the FFN output.
    np.testing.assert_allclose(np.asarray(scores @ ffn.w_out[...]), np.asarray(y), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask), a_np != 0)
    if ACTIVATIONS[name].exact_zeros:
        assert 0.05 < float(mask.mean()) < 0.95


def test_record_off_sows_nothing():
    ffn = make("relu")
    _, rec = nnx.capture(ffn, nnx.Intermediate)(rand_x())
    assert not rec


def test_threshold_mode_equals_hand_masking():
    ffn = make("silu")
    x = rand_x()
    a, _ = ffn.hidden(x)
    mag = np.abs(np.asarray(a)) * np.linalg.norm(np.asarray(ffn.w_out[...]), axis=1)
    t = float(np.quantile(mag, 0.6))
    y = ffn(x, Sparsify(mode="threshold", threshold=t))
    kept = np.where(mag >= t, np.asarray(a), 0.0)
    np.testing.assert_allclose(np.asarray(y), kept @ np.asarray(ffn.w_out[...]), atol=1e-5)
    _, rec = nnx.capture(ffn, nnx.Intermediate)(x, Sparsify(mode="threshold", threshold=t), record="mask")
    mask = rec["mask"]
    mask = mask.get_value()[0]
    np.testing.assert_allclose(float(mask.mean()), float((mag >= t).mean()), atol=1e-6)


def test_topk_and_fat_modes_on_gate_score():
    ffn = make("swiglu")
    x = rand_x()
    s, a = ffn.hidden(x)
    s, a = np.asarray(s), np.asarray(a)
    w_out = np.asarray(ffn.w_out[...])
    k = 7
    kth = -np.sort(-np.abs(s), axis=-1)[..., k - 1 : k]
    y = ffn(x, Sparsify(mode="topk", k=k))
    np.testing.assert_allclose(np.asarray(y), np.where(np.abs(s) >= kth, a, 0) @ w_out, atol=1e-5)
    eps = 0.2
    y = ffn(x, Sparsify(mode="fat", eps=eps))
    np.testing.assert_allclose(np.asarray(y), np.where(np.abs(s) >= eps, a, 0) @ w_out, atol=1e-5)


def numpy_topk(s: np.ndarray, k: int) -> np.ndarray:
    """Exactly k per row of the largest |s|, ties to the lower index: a stable sort by −|s|."""
    order = np.argsort(-np.abs(s), axis=-1, kind="stable")[..., :k]
    keep = np.zeros(s.shape, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep


def test_topk_keeps_exactly_k_with_ties_in_the_ffn_and_the_metrics():
    """Gate scores with many ties (quantised): the FFN and metrics.topk_mask keep exactly k
    per token, the lower index winning a tie, as a stable numpy sort does."""
    from sparsity_jax.metrics.baselines import topk_mask
    from sparsity_jax.nn.sparsify import topk_keep

    ffn = make("relu")  # non-gated: the gate score is a itself
    x = rand_x()
    _, a = ffn.hidden(x)
    a_q = np.round(np.asarray(a) * 2) / 2  # ties everywhere (relu: many exact zeros and repeated halves)
    for k in (1, 5, 7, F // 2):
        want = numpy_topk(a_q, k)
        assert (np.diff(np.sort(np.abs(a_q), axis=-1), axis=-1) == 0).any()  # there are ties at the cut
        np.testing.assert_array_equal(np.asarray(topk_keep(jnp.asarray(a_q), k)), want)
        np.testing.assert_array_equal(np.asarray(topk_mask(a_q, k)), want)
        assert np.all(want.sum(-1) == k)
    # In the FFN: replace the kernel so its scores are the tied ones; y = kept a @ W_out.
    k = 7
    ffn.hidden = lambda x_: (jnp.asarray(a_q), jnp.asarray(a_q))
    y = ffn(x, Sparsify(mode="topk", k=k))
    np.testing.assert_allclose(np.asarray(y), np.where(numpy_topk(a_q, k), a_q, 0) @ np.asarray(ffn.w_out[...]),
                               atol=1e-5)


def test_topk_with_a_traced_k_is_the_same_rule_and_compiles_once():
    """k as an array (the Pareto sweep's): the bisection over float bits finds the same
    k-th value as the stable numpy sort, ties and exact zeros included, and one jitted
    function serves every k (one trace)."""
    from sparsity_jax.nn.sparsify import kth_largest, topk_keep

    rng = np.random.default_rng(3)
    a = np.round(rng.standard_normal((6, 5, 64)).astype(np.float32) * 2) / 2  # ties and zeros
    a[0, 0] = 0.0  # a row of zeros: every k keeps the lowest indices
    traces = []

    @jax.jit
    def keep(s, k):
        traces.append(k)
        return topk_keep(s, k)

    for k in (1, 2, 7, 32, 63, 64):
        np.testing.assert_array_equal(np.asarray(keep(jnp.asarray(a), jnp.int32(k))), numpy_topk(a, k))
        kth = -np.sort(-np.abs(a), axis=-1)[..., k - 1: k]
        np.testing.assert_array_equal(np.asarray(kth_largest(jnp.abs(jnp.asarray(a)), jnp.int32(k))), kth)
    assert len(traces) == 1
    y = rng.standard_normal((4, 64)).astype(np.float32) * 1e-30  # tiny and denormal-adjacent magnitudes
    np.testing.assert_array_equal(np.asarray(keep(jnp.asarray(y), jnp.int32(9))), numpy_topk(y, 9))


def test_unit_mask_zeroes_forward_and_gradient():
    ffn = make("relu")
    x = rand_x()
    m = np.ones(F, np.float32)
    m[::3] = 0
    sp = Sparsify(mode="unit_mask", unit_mask=jnp.asarray(m))
    _, rec = nnx.capture(ffn, nnx.Intermediate)(x, sp, record="scores")
    scores = rec["scores"]
    scores = scores.get_value()[0]
    assert np.all(np.asarray(scores)[..., m == 0] == 0)

    g, p = nnx.split(ffn, nnx.Param)

    def loss(p):
        return jnp.sum(nnx.merge(g, p)(x, sp) ** 2)

    grads = jax.grad(loss)(p)
    assert np.all(np.asarray(grads["w_in"][...])[:, m == 0] == 0)
    assert np.all(np.asarray(grads["w_out"][...])[m == 0] == 0)
    assert np.abs(np.asarray(grads["w_in"][...])[:, m == 1]).sum() > 0


def test_per_layer_modes_and_bad_mode():
    sp = Sparsify(mode=("dense", "threshold"), threshold=jnp.array([0.0, 0.5]), unit_mask=jnp.ones((2, F)))
    one = sp.for_layer(1, 2)
    assert one.mode == "threshold" and float(one.threshold) == 0.5 and one.unit_mask.shape == (F,)
    with pytest.raises(ValueError, match="unknown FFN mode"):
        make("relu")(rand_x(), Sparsify(mode="nope"))

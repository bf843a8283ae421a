"""Baseline masks (ReLU / Top-k / FAT-ε) and neuron statistics vs numpy."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sparsity_jax.errors import UserError
from sparsity_jax.metrics import baselines, stats
from tests.metrics.call_styles import four_call_styles

L, B, T, F = 2, 4, 16, 32


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((L, B, T, F)).astype(np.float32)
    s[s < -0.5] = 0.0  # exact zeros for the ReLU baseline
    token_mask = np.ones((B, T), bool)
    token_mask[1, 10:] = False
    token_mask[3, 3:] = False
    token_ids = rng.integers(0, 12, (B, T))  # vocab 16: ids 12..15 never seen
    return s, token_mask, token_ids


def test_zero_and_fat_masks_are_active_units(batch):
    s, _, _ = batch
    np.testing.assert_array_equal(baselines.zero_mask(s), s != 0)
    np.testing.assert_array_equal(baselines.fat_mask(s, 0.3), np.abs(s) >= 0.3)


def test_topk_per_token(batch):
    s, _, _ = batch
    active = np.asarray(baselines.topk_mask(s, 5))
    assert np.all(active.sum(-1) == 5)
    kth = -np.sort(-np.abs(s), axis=-1)[..., 4:5]
    np.testing.assert_array_equal(active, np.abs(s) >= kth)  # continuous data: no ties but zeros
    assert not np.asarray(baselines.topk_mask(s, 0)).any()
    with pytest.raises(UserError, match="k between 0 and F"):
        baselines.topk_mask(s, F + 1)


def test_topk_global_spends_budget_on_real_tokens(batch):
    s, token_mask, _ = batch
    k = 6
    active = np.asarray(baselines.topk_mask(s, k, token_mask, per_token=False))
    n_real = token_mask.sum()
    for layer in range(L):
        assert active[layer].sum() == k * n_real  # keep fraction k/F of the real pairs
        assert not active[layer][~token_mask].any()
        real = np.abs(s[layer][token_mask])
        cut = -np.sort(-real.ravel())[k * n_real - 1]
        np.testing.assert_array_equal(active[layer][token_mask], real >= cut)


def ref_frequency(mask, token_mask):
    return (mask & token_mask[..., None]).sum((-3, -2)) / token_mask.sum()


def test_neuron_frequency_dead_ratio_and_cdf(batch):
    s, token_mask, _ = batch
    mask = np.abs(s) > 1.2
    mask[:, :, :, :3] = False  # 3 dead neurons in every layer
    mask[:, :, :, 3] = False
    mask[0, 0, 0, 3] = True  # neuron 3 of layer 0: active on 1 of 42 real tokens only
    mask[1, 3, 5, 3] = True  # ... and in layer 1 only on padding: dead
    freq = np.asarray(stats.neuron_frequency(mask, token_mask))
    want = ref_frequency(mask, token_mask)
    np.testing.assert_allclose(freq, want, rtol=1e-6)
    np.testing.assert_allclose(stats.dead_ratio(freq), (want < 1e-3).mean(-1))
    np.testing.assert_allclose(stats.dead_ratio(freq, 0.05), (want < 0.05).mean(-1))
    cdf = np.asarray(stats.hot_neuron_cdf(freq))
    sorted_ = -np.sort(-want, axis=-1)
    np.testing.assert_allclose(cdf, np.cumsum(sorted_, -1) / sorted_.sum(-1, keepdims=True), rtol=1e-5)
    assert np.all(np.diff(cdf, axis=-1) >= 0) and np.allclose(cdf[..., -1], 1)
    np.testing.assert_array_equal(stats.hot_neuron_cdf(np.zeros(F)), 0.0)
    # No token mask: leading layer axes are declared explicitly.
    np.testing.assert_allclose(stats.neuron_frequency(mask, layer_axes=1), mask.mean((1, 2)), rtol=1e-6)
    with pytest.raises(UserError, match="token_mask"):
        stats.neuron_frequency(mask, np.ones((B, T + 1), bool))


def test_per_token_id_activation_ratio(batch):
    s, token_mask, token_ids = batch
    mask = np.abs(s) > 0.8
    ratio, count = stats.per_token_id_activation_ratio(mask, token_ids, 16, token_mask)
    per_token = mask.mean(-1)  # (L, B, T)
    for v in range(16):
        sel = (token_ids == v) & token_mask
        assert int(count[v]) == sel.sum()
        want = per_token[:, sel].mean(-1) if sel.any() else np.zeros(L)
        np.testing.assert_allclose(ratio[:, v], want, rtol=1e-5, atol=1e-7)
    assert not np.isnan(np.asarray(ratio)).any() and np.all(np.asarray(count)[12:] == 0)


def test_neuron_statistics_in_four_call_styles(batch):
    """neuron_frequency and per_token_id_activation_ratio: plain, jit on sharded arrays,
    shard_map and pmap (batch over 4 devices) equal the numpy reference."""
    s, token_mask, token_ids = batch
    mask = np.abs(s[0]) > 0.8  # (B, T, F)

    def both(mask, token_mask, token_ids, axis_name=None):
        return (stats.neuron_frequency(mask, token_mask, axis_name=axis_name),
                stats.per_token_id_activation_ratio(mask, token_ids, 16, token_mask, axis_name=axis_name))

    want_ratio, want_count = stats.per_token_id_activation_ratio(mask, token_ids, 16, token_mask)
    for name, (freq, (ratio, count)) in four_call_styles(both, (mask, token_mask, token_ids), (0, 0, 0), n=4).items():
        np.testing.assert_allclose(freq, ref_frequency(mask, token_mask), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(ratio, want_ratio, rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(count, want_count, err_msg=name)


def test_topk_on_sharded_scores(batch):
    s, token_mask, _ = batch
    mesh = jax.make_mesh((4, 2), ("data", "tensor"))
    s_sharded = jax.device_put(s[0], NamedSharding(mesh, P("data", None, "tensor")))
    for per_token in (True, False):
        got = jax.jit(baselines.topk_mask, static_argnums=(1, 3))(s_sharded, 5, token_mask, per_token)
        np.testing.assert_array_equal(got, baselines.topk_mask(s[0], 5, token_mask, per_token))

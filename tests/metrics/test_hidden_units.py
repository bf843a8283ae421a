"""Tests of sparsity_jax.metrics.hidden_units against the paper's A.6 pseudocode.

The reference below is a loop-based numpy transcription of Wild & Anderson App. A.6
(functions named as in the paper), applied to each sequence's real tokens only.
"""
import jax
import numpy as np
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.metrics import hidden_units as hu
from sparsity_jax.metrics.activation import activation_ratio
from tests.metrics.call_styles import four_call_styles

PERCENTILES = (50, 65, 75, 90)
# Jitted once per shape (cheaper than eager op-by-op dispatch); plain eager calls are
# covered by test_plain_jit_shard_map_pmap_agree.
use_fn = jax.jit(hu.hidden_unit_use, static_argnames=("axis_name", "batch_groups"))
pct_fn = jax.jit(hu.sequence_use_percentiles, static_argnames=("percentiles", "axis_name"))


# ---- A.6 pseudocode, transcribed (seq: (tokens, hidden) 0/1 array) ----
def get_rescaled_percentile(fract_nonzero, desired_percentile):
    fract_zero = 1 - fract_nonzero
    rescaled_percentile = desired_percentile * fract_nonzero + 100 * fract_zero
    return rescaled_percentile


def percentile_used_dimension_count(seq, percentile):
    seq_dim = seq.shape[0]
    use_count_by_dimension = np.sum(seq, axis=0)
    frac_dimensions_gt_0 = np.sum(use_count_by_dimension > 0) / use_count_by_dimension.shape[0]
    new_percentile = get_rescaled_percentile(frac_dimensions_gt_0, percentile)
    return np.percentile(use_count_by_dimension, new_percentile) / seq_dim


def sequence_total_dimensions_used(seq):
    summed_activations_over_sequence = np.sum(seq, axis=0)
    return np.sum((summed_activations_over_sequence > 0).astype(np.int32))


# ---- reference metrics over a padded batch, plain loops ----
def real_tokens(mask_BxTxF, token_mask_BxT, b):
    rows = [mask_BxTxF[b, t] for t in range(mask_BxTxF.shape[1]) if token_mask_BxT[b, t]]
    return np.array(rows, dtype=np.int32).reshape(len(rows), mask_BxTxF.shape[2])


def ref_use(mask_BxTxF, token_mask_BxT, batch_groups=1):
    num_seq, _, num_units = mask_BxTxF.shape
    token_use, seq_use, batch_use = [], [], []
    for b in range(num_seq):
        seq = real_tokens(mask_BxTxF, token_mask_BxT, b)
        for token in seq:
            token_use.append(sum(1 for f in range(num_units) if token[f]) / num_units)
        if len(seq):
            seq_use.append(sequence_total_dimensions_used(seq) / num_units)
    size = num_seq // batch_groups
    for g in range(batch_groups):
        seqs = [real_tokens(mask_BxTxF, token_mask_BxT, b) for b in range(g * size, (g + 1) * size)]
        batch = np.concatenate(seqs)  # flatten(batch) of the group's real tokens
        if len(batch):
            batch_use.append(sequence_total_dimensions_used(batch) / num_units)
    per_token, per_seq, per_batch = np.mean(token_use), np.mean(seq_use), np.mean(batch_use)
    return {
        "per_token": per_token,
        "per_sequence": per_seq,
        "per_batch": per_batch,
        "token_over_sequence": per_token / per_seq,
        "sequence_over_batch": per_seq / per_batch,
    }


def ref_percentiles(mask_BxTxF, token_mask_BxT):
    out = {}
    for p in PERCENTILES:
        values = []
        for b in range(mask_BxTxF.shape[0]):
            seq = real_tokens(mask_BxTxF, token_mask_BxT, b)
            if len(seq):
                values.append(percentile_used_dimension_count(seq, p))
        out[p] = np.mean(values)
    return out


def reference(ref_fn, mask, token_mask_BxT, **kw):
    """ref_fn per layer for an (L, B, T, F) mask, stacked to (L,) values."""
    if mask.ndim == 3:
        return ref_fn(mask, token_mask_BxT, **kw)
    layers = [ref_fn(m, token_mask_BxT, **kw) for m in mask]
    return {k: np.array([layer[k] for layer in layers]) for k in layers[0]}


def random_batch(seed, num_layers, batch, seq_len, num_units):
    """Masks of different densities per layer and ragged real lengths (some 0)."""
    rng = np.random.default_rng(seed)
    density_Lx1x1x1 = np.linspace(0.03, 0.6, num_layers)[:, None, None, None]
    mask = rng.random((num_layers, batch, seq_len, num_units)) < density_Lx1x1x1
    lengths = rng.integers(0, seq_len + 1, size=batch)
    lengths[[1, 6, 7]] = [0, 0, 0]  # sequences 6, 7 = the whole batch of device 3 of 8
    lengths[0] = seq_len
    token_mask = np.arange(seq_len)[None, :] < lengths[:, None]
    token_mask[2] = rng.random(seq_len) < 0.5  # a non-prefix pattern too
    token_mask[2, 0] = True
    return mask, token_mask


def assert_dicts_close(got, want, atol=1e-6, where=""):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=atol,
                                   err_msg=f"{where} {k}")


# ---- hand-computed examples ----
def hand_batch():
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 0, [0, 1]] = mask[0, 1, 0] = True  # seq 0: token counts 2, 1, 0
    mask[1, 0, 2] = mask[1, 1, 2] = True  # seq 1: counts 1, 1
    mask[1, 2, :] = True  # padding: must not count
    token_mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    return mask, token_mask


def test_hidden_unit_use_hand_example():
    mask, token_mask = hand_batch()
    got = use_fn(mask, token_mask)
    assert_dicts_close(got, {"per_token": 0.25, "per_sequence": 0.375, "per_batch": 0.75,
                             "token_over_sequence": 2 / 3, "sequence_over_batch": 0.5})
    got = use_fn(mask, token_mask, batch_groups=2)
    assert float(got["per_batch"]) == pytest.approx(0.375)
    assert float(got["sequence_over_batch"]) == pytest.approx(1.0)


def test_percentiles_hand_example_follows_the_rescaled_formula():
    # seq 0 counts [2, 1, 0, 0] / 3 tokens; seq 1 counts [0, 0, 2, 0] / 2 tokens.
    # p=50: seq 0 -> q=75, index 2.25 of [0,0,1,2] -> 1.25/3; seq 1 -> q=87.5,
    # index 2.625 of [0,0,0,2] -> 1.25/2. (The plain percentile of the used subset
    # would give 1.5/3 and 2/2: the paper's formula is followed, not that one.)
    got = pct_fn(hand_batch()[0], (50, 90), hand_batch()[1])
    assert float(got[50]) == pytest.approx((1.25 / 3 + 1.25 / 2) / 2, abs=1e-6)
    assert float(got[90]) == pytest.approx((1.85 / 3 + 1.85 / 2) / 2, abs=1e-6)


# ---- against the A.6 transcription on random padded batches ----
@pytest.mark.parametrize("with_layers", [False, True])
def test_against_paper_pseudocode(with_layers):
    mask, token_mask = random_batch(0, num_layers=3, batch=8, seq_len=9, num_units=20)
    if not with_layers:
        mask = mask[1]
    want_use = reference(ref_use, mask, token_mask, batch_groups=2)
    want_pct = reference(ref_percentiles, mask, token_mask)
    got_use = use_fn(mask, token_mask, batch_groups=2)
    got_pct = pct_fn(mask, PERCENTILES, token_mask)
    assert_dicts_close(got_use, want_use)
    assert_dicts_close(got_pct, want_pct)
    assert got_use["per_batch"].shape == ((3,) if with_layers else ())


@pytest.mark.parametrize("seq_len", [37, 96, 254, 300])  # int16 path; int8 chunks of 96, 127, 100
def test_sequence_counts_exact_for_every_chunking(seq_len):
    mask, token_mask = random_batch(3, 2, 8, seq_len, 16)
    mask[:, 0] = True  # a full-length sequence using every unit: counts reach T
    count_LxBxF, length_B = hu.sequence_unit_counts(mask, token_mask)
    want = np.sum(mask & token_mask[None, :, :, None], axis=2)
    np.testing.assert_array_equal(np.asarray(count_LxBxF), want)
    np.testing.assert_array_equal(np.asarray(length_B), token_mask.sum(-1))
    assert count_LxBxF.dtype == np.int32 and int(count_LxBxF.max()) == seq_len


def test_percentiles_at_paper_width():
    # F = 32768: the percentile index must be exact beyond float32 resolution.
    rng = np.random.default_rng(1)
    mask = rng.random((3, 7, 32768)) < np.array([0.002, 0.05, 0.4])[:, None, None]
    token_mask = np.ones((3, 7), bool)
    assert_dicts_close(pct_fn(mask), ref_percentiles(mask, token_mask), atol=1e-6)


def test_empty_input_gives_zeros_not_nan():
    mask = np.ones((2, 3, 5), bool)
    got = use_fn(mask, np.zeros((2, 3), bool))
    assert all(float(v) == 0.0 for v in got.values())
    assert float(pct_fn(mask, (50,), np.zeros((2, 3), bool))[50]) == 0.0


def test_bad_input_raises_user_error():
    mask = np.ones((4, 3, 5), bool)
    with pytest.raises(UserError, match="batch_groups"):
        hu.hidden_unit_use(mask, batch_groups=3)
    with pytest.raises(UserError, match="token_mask"):
        hu.hidden_unit_use(mask, np.ones((4, 2), bool))
    with pytest.raises(UserError, match=r"\(B, T, F\)"):
        hu.units_used(np.ones((3, 5), bool))
    with pytest.raises(UserError, match="percentiles"):
        hu.sequence_use_percentiles(mask, (101,))


# ---- plain vs jit on sharded arrays vs shard_map vs pmap, 8 devices ----
GROUPS = (1, 4, 8, 16)  # global batch; 2 devices; 1 device (the paper's); half a device


def all_metrics(mask, token_mask, axis_name=None):
    return {
        "ratio": activation_ratio(mask, token_mask, axis_name),
        "use": {g: hu.hidden_unit_use(mask, token_mask, axis_name, batch_groups=g) for g in GROUPS},
        "pct": hu.sequence_use_percentiles(mask, PERCENTILES, token_mask, axis_name),
        "used": hu.units_used(mask, token_mask, axis_name),
    }


@pytest.mark.parametrize("with_layers", [False, True])
def test_plain_jit_shard_map_pmap_agree(with_layers):
    # 16 sequences, 2 per device; device 3 holds only padding (sequences 6, 7).
    mask, token_mask = random_batch(2, num_layers=2, batch=16, seq_len=6, num_units=24)
    if not with_layers:
        mask = mask[0]
    settings = four_call_styles(all_metrics, (mask, token_mask), batch_axes=(1 if with_layers else 0, 0))
    want_use = {g: reference(ref_use, mask, token_mask, batch_groups=g) for g in GROUPS}
    want_pct = reference(ref_percentiles, mask, token_mask)
    want_used = np.any(mask & token_mask[..., None], axis=(-3, -2))
    per_token = np.where(token_mask[..., None], mask, False).mean(-1)
    want_ratio = (per_token * token_mask).sum((-2, -1)) / token_mask.sum()
    for name, got in settings.items():
        np.testing.assert_allclose(np.asarray(got["ratio"]), want_ratio, rtol=1e-6, err_msg=name)
        for g in GROUPS:
            assert_dicts_close(got["use"][g], want_use[g], where=f"{name} batch_groups={g}")
        assert_dicts_close(got["pct"], want_pct, where=name)
        np.testing.assert_array_equal(np.asarray(got["used"]), want_used, err_msg=name)


def test_per_device_batch_differs_from_global():
    # Granularity matters (W&A §2.1): the same batch uses fewer units per device batch.
    mask, token_mask = random_batch(2, num_layers=2, batch=16, seq_len=6, num_units=24)
    per_device = use_fn(mask, token_mask, batch_groups=8)["per_batch"]
    global_ = use_fn(mask, token_mask)["per_batch"]
    assert np.all(np.asarray(per_device) < np.asarray(global_))


# ---- turn-on / turn-off (Table 2) ----
def test_unit_tracking_hand_example():
    # L=2 layers, F=4 units, 3 batches of 1 sequence x 2 tokens; the 2nd token of the
    # last batch is padding: counted, its unit 0 would cancel both layers' turn-offs.
    used = [  # per batch: [layer][token] -> units used
        [[[0], [1]], [[0], []]],
        [[[1], [2]], [[0, 1], []]],
        [[[3], [0]], [[1, 2, 3], [0]]],
    ]
    token_masks = [np.array([[1, 1]], bool), np.array([[1, 1]], bool), np.array([[1, 0]], bool)]
    batches = []
    for batch in used:
        mask = np.zeros((2, 1, 2, 4), bool)
        for layer, tokens in enumerate(batch):
            for t, units in enumerate(tokens):
                mask[layer, 0, t, units] = True
        batches.append(mask)

    expected = [  # on_in_first, turned_on, turned_off, current, ever_used per layer
        {"on_in_first": [0.5, 0.25], "turned_on": [0.0, 0.0], "turned_off": [0.0, 0.0],
         "current": [0.5, 0.25], "ever_used": [0.5, 0.25]},
        {"on_in_first": [0.5, 0.25], "turned_on": [0.25, 0.25], "turned_off": [0.25, 0.0],
         "current": [0.5, 0.5], "ever_used": [0.75, 0.5]},
        {"on_in_first": [0.5, 0.25], "turned_on": [0.25, 0.75], "turned_off": [0.5, 0.25],
         "current": [0.25, 0.75], "ever_used": [1.0, 1.0]},
    ]
    state = hu.init_unit_tracking(hu.units_used(batches[0], token_masks[0]))
    update = jax.jit(hu.unit_tracking_update)
    for mask, token_mask, want in zip(batches, token_masks, expected):
        state, stats = update(state, hu.units_used(mask, token_mask))
        assert_dicts_close(stats, {k: np.array(v) for k, v in want.items()})
    np.testing.assert_array_equal(np.asarray(state["first"]), [[1, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(state["ever"]), np.ones((2, 4), bool))

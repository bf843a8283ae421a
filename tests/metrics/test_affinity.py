"""Reuse ratio and co-activation (ReLU² §4 (3), §5.3) vs plain-loop numpy transcriptions of the
definitions, by hand, and under plain / jit-sharded / shard_map / pmap calls."""
import functools

import jax
import numpy as np
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.affinity import coactivation, coactivation_from_counts, coactivation_gap, reuse_ratio
from tests.metrics.call_styles import four_call_styles

L, B, T, F = 2, 8, 16, 32
WINDOWS = (1, 2, 3, 4, 8, 32)


# ---- the definitions, transcribed ----
def ref_reuse(mask_BxTxF, token_mask_BxT, seg_BxT, w):
    """Mean over counted tokens of |A_t ∩ ∪ window| / |A_t|; the window is the previous
    w real tokens of t's sequence (a run of equal segment id over a row's real tokens)."""
    ratios = []
    for b in range(mask_BxTxF.shape[0]):
        real = [t for t in range(mask_BxTxF.shape[1]) if token_mask_BxT[b, t]]
        for i, t in enumerate(real):
            window, j = [], i - 1
            while j >= 0 and seg_BxT[b, real[j]] == seg_BxT[b, t] and len(window) < w:
                window.append(real[j])
                j -= 1
            active = set(np.flatnonzero(mask_BxTxF[b, t]))
            if window and active:
                union = set().union(*(np.flatnonzero(mask_BxTxF[b, u]) for u in window))
                ratios.append(len(active & union) / len(active))
    return np.mean(ratios) if ratios else 0.0


def ref_activation_ratio(mask_BxTxF, token_mask_BxT):
    return np.mean([mask_BxTxF[b, t].sum() / F for b, t in zip(*np.nonzero(token_mask_BxT))])


def ref_coactivation(mask_BxTxF, token_mask_BxT):
    """(C, counts): counts[i, j] = real tokens with i and j active; C = counts / counts[i, i]."""
    n = mask_BxTxF.shape[-1]
    counts = np.zeros((n, n), np.int64)
    for b, t in zip(*np.nonzero(token_mask_BxT)):
        for i in np.flatnonzero(mask_BxTxF[b, t]):
            for j in np.flatnonzero(mask_BxTxF[b, t]):
                counts[i, j] += 1
    C = np.zeros((n, n))
    for i in range(n):
        if counts[i, i]:
            C[i] = counts[i] / counts[i, i]
    return C, counts


def ref_gap(C, active=None):
    rows = [i for i in range(len(C)) if (C[i, i] > 0 if active is None else active[i])]
    if not rows:
        return 0.0
    top = np.mean([max(C[i, j] for j in range(len(C)) if j != i) for i in rows])
    off = [C[i, j] for i in rows for j in range(len(C)) if j != i]
    return top - np.mean(off)


# ---- data: ragged / interior / left padding, packed segments, a device with padding only ----
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    # Layer 1: each token keeps most of its predecessor's neurons (reuse well above chance).
    mask = rng.random((L, B, T, F)) < np.array([0.1, 0.35])[:, None, None, None]
    for t in range(1, T):
        mask[1, :, t] |= mask[1, :, t - 1] & (rng.random((B, F)) < 0.6)
    mask[:, 4, 5] = False  # real tokens with no active neuron: left out of the reuse mean
    mask[:, :, :, 30:] = False  # never-active neurons: zero rows of C
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[7] = T, 0  # device 7 holds padding only
    token_mask = np.arange(T) < lengths[:, None]
    token_mask[2] = rng.random(T) < 0.6  # interior padding: skipped, the window goes on
    token_mask[3] = np.arange(T) >= 5  # left padding
    segment_ids = np.cumsum(rng.random((B, T)) < 0.2, axis=1) + 1  # packed rows
    segment_ids[~token_mask] = 0
    mask[:, 6] |= ~token_mask[6][:, None]  # garbage on padding must not count
    return mask, token_mask, segment_ids.astype(np.int32)


def all_metrics(mask, token_mask, segment_ids, axis_name=None):
    co = coactivation(mask, token_mask, axis_name, chunk=24)
    reuse = reuse_ratio(mask, WINDOWS, token_mask, axis_name, segment_ids, neuron_chunk=12)  # blocks 12, 12, 8
    return {"reuse": reuse, "coactivation": co, "gap": coactivation_gap(co.matrix)}


def test_four_call_styles_match_the_definitions(batch):
    mask, token_mask, segment_ids = batch
    want_reuse = np.array([[ref_reuse(mask[l], token_mask, segment_ids, w) for l in range(L)] for w in WINDOWS])
    want_ratio = [ref_activation_ratio(mask[l], token_mask) for l in range(L)]
    want_co = [ref_coactivation(mask[l], token_mask) for l in range(L)]
    want_gap = [ref_gap(C) for C, _ in want_co]
    assert want_reuse[1, 1] > want_reuse[0, 1] > want_reuse[0, 0] > 0

    styles = four_call_styles(all_metrics, batch, batch_axes=(1, 0, 0))
    close = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
    for name, got in styles.items():
        close(got["reuse"].reuse, want_reuse, err_msg=f"{name} reuse")
        close(got["reuse"].activation_ratio, want_ratio, err_msg=f"{name} activation ratio")
        co = got["coactivation"]
        close(co.matrix, [C for C, _ in want_co], err_msg=f"{name} C")
        np.testing.assert_array_equal(co.counts, [c for _, c in want_co], err_msg=f"{name} counts")
        np.testing.assert_array_equal(co.active_counts, [np.diag(c) for _, c in want_co])
        np.testing.assert_array_equal(co.neurons, np.arange(F))
        assert int(co.tokens) == token_mask.sum()
        close(got["gap"], want_gap, err_msg=f"{name} gap")
    # Without segment ids each row is one sequence; all neurons in one block.
    rows = reuse_ratio(mask, WINDOWS, token_mask)
    close(rows.reuse, [[ref_reuse(mask[l], token_mask, np.zeros((B, T)), w) for l in range(L)] for w in WINDOWS])


# ---- reuse ratio by hand ----
def test_reuse_hand_example_padding_and_segments():
    # One row, F = 4: tokens {0,1}, {1,2}, {3}, padding {0,1,2,3}, {0,3}.
    mask = np.zeros((1, 5, 4), bool)
    for t, units in enumerate([[0, 1], [1, 2], [3], [0, 1, 2, 3], [0, 3]]):
        mask[0, t, units] = True
    token_mask = np.array([[1, 1, 1, 0, 1]], bool)
    got = reuse_ratio(mask, (1, 2, 3), token_mask)
    # Padding is skipped: the last token's predecessors are {3}, {1,2}, {0,1}.
    # w=1: (1/2 + 0/1 + 1/2) / 3; w=2: the same; w=3: (1/2 + 0 + 2/2) / 3.
    np.testing.assert_allclose(got.reuse, [1 / 3, 1 / 3, 1 / 2], atol=1e-6)
    assert float(got.activation_ratio) == pytest.approx((2 + 2 + 1 + 2) / 16)
    # A second sequence starting at token 2: token 2 has no predecessor, and the last
    # token's window stops at token 2 whatever w.
    got = reuse_ratio(mask, (1, 2, 3), token_mask, segment_ids=np.array([[1, 1, 2, 0, 2]]))
    np.testing.assert_allclose(got.reuse, [1 / 2, 1 / 2, 1 / 2], atol=1e-6)
    one = reuse_ratio(mask, 3, token_mask)  # one window, no layer axis: scalars
    assert one.reuse.shape == () and one.activation_ratio.shape == ()
    assert float(one.reuse) == pytest.approx(1 / 2, abs=1e-6)
    assert float(reuse_ratio(mask, 3, np.zeros((1, 5), bool)).reuse) == 0.0


# ---- co-activation ----
def test_chunking_and_subsample_agree_with_the_full_matrix(batch):
    mask, token_mask, _ = batch
    full = coactivation(mask, token_mask, chunk=10**6)  # one step over all T
    want = np.stack([ref_coactivation(m, token_mask)[0] for m in mask])
    np.testing.assert_allclose(full.matrix, want, rtol=0, atol=1e-6)
    for chunk in (1, 24, 40):  # blocks of 1, 3, 5 positions of T = 16 (B = 8)
        got = coactivation(mask, token_mask, chunk=chunk)
        np.testing.assert_array_equal(got.counts, full.counts, err_msg=f"chunk={chunk}")
    sub = coactivation(mask, token_mask, chunk=40, neurons=12, key=jax.random.key(3))
    ids = np.asarray(sub.neurons)
    assert ids.shape == (12,) and np.all(np.diff(ids) > 0) and ids.max() < F
    np.testing.assert_allclose(sub.matrix, want[:, ids][:, :, ids], rtol=0, atol=1e-6)
    again = coactivation(mask, token_mask, chunk=40, neurons=12, key=jax.random.key(3))
    np.testing.assert_array_equal(again.neurons, ids)  # a fixed key: the same neurons
    picked = coactivation(mask[0], token_mask, chunk=40, neurons=np.array([31, 2, 7]))
    np.testing.assert_array_equal(picked.neurons, [2, 7, 31])
    np.testing.assert_allclose(picked.matrix, want[0][np.ix_([2, 7, 31], [2, 7, 31])], atol=1e-6)
    # Counts of two halves of the tokens add up to the whole batch's.
    first = token_mask & (np.arange(T) < 7)
    halves = [coactivation(mask, part, chunk=40).counts for part in (first, token_mask & ~first)]
    np.testing.assert_allclose(coactivation_from_counts(halves[0] + halves[1]), full.matrix, atol=1e-6)


def test_coactivation_and_gap_hand_example():
    # Tokens {0, 1}, {0}, {0, 1}, {1}; neuron 2 never active (padding does not count).
    mask = np.zeros((1, 5, 3), bool)
    for t, units in enumerate([[0, 1], [0], [0, 1], [1], [0, 1, 2]]):
        mask[0, t, units] = True
    co = coactivation(mask, np.array([[1, 1, 1, 1, 0]], bool), chunk=2)
    C = np.array([[1, 2 / 3, 0], [2 / 3, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(co.matrix, C, atol=1e-6)
    np.testing.assert_array_equal(co.active_counts, [3, 3, 0])
    # Rows 0, 1: mean row max 2/3, mean off-diagonal entry (2/3 + 0 + 2/3 + 0) / 4.
    assert float(coactivation_gap(co.matrix)) == pytest.approx(2 / 3 - 1 / 3, abs=1e-6)
    # All three rows: (2/3 + 2/3 + 0) / 3 − (4/3) / 6.
    assert float(coactivation_gap(C, np.ones(3, bool))) == pytest.approx(4 / 9 - 2 / 9, abs=1e-6)
    assert float(coactivation_gap(np.zeros((3, 3)))) == 0.0
    layered = coactivation_gap(np.stack([C, np.eye(3)]))  # identity: max 0, mean 0
    np.testing.assert_allclose(layered, [1 / 3, 0.0], atol=1e-6)
    assert ref_gap(C) == pytest.approx(1 / 3) and ref_gap(C, np.ones(3)) == pytest.approx(2 / 9)


def test_bad_input_raises_user_error():
    mask = np.ones((2, 3, 4), bool)
    for bad in (0, -1, (), (1, 0), 1.5, True):
        with pytest.raises(UserError, match="window"):
            reuse_ratio(mask, bad)
    with pytest.raises(UserError, match="neuron_chunk"):
        reuse_ratio(mask, 1, neuron_chunk=0)
    with pytest.raises(UserError, match="segment_ids"):
        reuse_ratio(mask, 1, segment_ids=np.zeros((2, 4), np.int32))
    with pytest.raises(UserError, match=r"\(B, T, F\)"):
        coactivation(mask[0])
    with pytest.raises(UserError, match="token_mask"):
        coactivation(mask, np.ones((3, 2), bool))
    with pytest.raises(UserError, match="subsample size"):
        coactivation(mask, neurons=5)
    with pytest.raises(UserError, match="chunk"):
        coactivation(mask, chunk=0)
    with pytest.raises(UserError, match="n >= 2"):
        coactivation_gap(np.ones((1, 1)))
    with pytest.raises(UserError, match="active"):
        coactivation_gap(np.eye(3), np.ones(2, bool))

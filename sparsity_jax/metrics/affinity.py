"""Hardware affinity of activation patterns (ReLU² §4 (3), §5.3, Figs. 6–7).

Between tokens: the reuse ratio — the share of a token's active neurons that one of
the previous w tokens of its sequence already activated (a sliding-window parameter
cache). Between neurons: the co-activation matrix C[i, j] = #tokens with i and j both
active / #tokens with i active, and its top-average co-activation gap. Inputs are
boolean active-neuron masks `mask_BxTxF` or `mask_LxBxTxF` with an explicit
`token_mask_BxT` (padding never counts); with `axis_name` (inside shard_map / pmap on
the local batch shard) counts are psum'd, so every result is global.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import run_auto
from sparsity_jax.metrics.reduce import AxisName, check_batch_rank, check_per_token, psum, real_tokens, safe_div

Array = jax.Array


class ReuseRatio(NamedTuple):
    """Reuse ratio per window and layer, and each layer's activation ratio (ReLU² Fig. 6)."""

    reuse: Array  # (W, L) for a window sequence and a layer axis; (L,), (W,) or () otherwise
    activation_ratio: Array  # mean |A_t| / F over real tokens: (L,) or ()


class Coactivation(NamedTuple):
    """Co-activation of n neurons (all F, or a subsample) over the real tokens."""

    matrix: Array  # C, float32 (n, n) or (L, n, n); rows of never-active neurons are 0
    counts: Array  # int32, same shape: #tokens with i and j both active (diagonal = active)
    active_counts: Array  # int32 (n,) or (L, n): #tokens with neuron i active
    neurons: Array  # int32 (n,): the neuron id of each row / column, ascending
    tokens: Array  # int32 (): real tokens counted


def _segment_ids(mask: Array, segment_ids: Array | None) -> Array | None:
    """`segment_ids` checked to be (B, T) (None stays None)."""
    if segment_ids is None:
        return None
    check_per_token(segment_ids, mask.shape[-3:-1], f"the mask {mask.shape}", "segment_ids")
    return jnp.asarray(segment_ids)


def _token_mask(mask: Array, token_mask: Array | None) -> Array:
    """`token_mask_BxT` as bool (all True for None)."""
    check_batch_rank(mask, "the active-neuron mask")
    return real_tokens(token_mask, mask.shape[-3:-1], f"the mask {mask.shape}")


def _shift(x_BxTxF: Array, d: int) -> Array:
    """x[:, t - d] at position t (False for t < d)."""
    if d >= x_BxTxF.shape[1]:
        return jnp.zeros_like(x_BxTxF)
    return jnp.pad(x_BxTxF[:, : x_BxTxF.shape[1] - d], ((0, 0), (d, 0), (0, 0)))


# ---- reuse between tokens ----
def reuse_ratio(
    mask: Array,
    window: int | Sequence[int],
    token_mask: Array | None = None,
    axis_name: AxisName = None,
    segment_ids: Array | None = None,
    *,
    neuron_chunk: int = 256,
) -> ReuseRatio:
    """Reuse ratio of a sliding window of w previous tokens (ReLU² §4 (3), §5.3, Fig. 6).

    For a token t with active set A_t, reuse_t = |A_t ∩ (A_{t−1} ∪ … ∪ A_{t−w})| / |A_t|,
    averaged over the real tokens that have at least one real predecessor in their
    sequence and |A_t| > 0. The window holds the previous w *real* tokens of t's own
    sequence: it is truncated at the sequence start, never crosses into another
    sequence, and padding is skipped as if removed (padding tokens are in no window and
    do not shorten one, so the result does not depend on where padding sits). A sequence
    is a row, or with `segment_ids` a maximal run of real tokens of a row with equal
    segment id (packed rows). Layers run one after another (lax.map) and neurons in
    blocks of `neuron_chunk` (a scan), so memory is a few (B, T, neuron_chunk) masks.

    Args:
      mask: bool `mask_BxTxF` or `mask_LxBxTxF`, True = active (non-zero counts as active).
      window: w >= 1, or a sequence of windows evaluated in one pass (powers of two are
        cheapest: the union over 2w tokens is two unions over w, so windows up to W cost
        log2(W) shifted ORs of the mask, plus one more per other window).
      token_mask: `token_mask_BxT`, True on real tokens; None = all real.
      axis_name: mapped axis name(s) inside shard_map / pmap; None otherwise.
      segment_ids: int (B, T) sequence ids of packed rows; None = one sequence per row.
      neuron_chunk: neurons per scan step (any F; the last block is clamped).

    Returns:
      ReuseRatio(reuse, activation_ratio): reuse has shape (W, L) for a window sequence
      and a layer axis, (L,) for one window, (W,) / () without a layer axis; 0 where no
      token counts. activation_ratio is each layer's mean |A_t| / F over real tokens.
    """
    single = not isinstance(window, Sequence)
    windows = (window,) if single else tuple(window)
    if not windows or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in windows):
        raise UserError(f"Pass window as a positive integer or a sequence of them; got {window!r}.")
    windows = tuple(int(w) for w in windows)
    mask = jnp.asarray(mask)
    token_mask_BxT = _token_mask(mask, token_mask)
    seg_BxT = _segment_ids(mask, segment_ids)
    neuron_chunk = operator.index(neuron_chunk)
    if neuron_chunk < 1:
        raise UserError(f"Pass neuron_chunk as a positive number of neurons; got {neuron_chunk}.")
    fn = functools.partial(_reuse, windows=windows, axis_name=axis_name, compact=token_mask is not None,
                           neuron_chunk=neuron_chunk)
    reuse_WxL, ratio_L = run_auto(fn, mask, token_mask_BxT, seg_BxT)
    if mask.ndim == 3:
        reuse_WxL, ratio_L = reuse_WxL[:, 0], ratio_L[0]
    return ReuseRatio(reuse_WxL[0] if single else reuse_WxL, ratio_L)


@functools.partial(jax.jit, static_argnames=("windows", "axis_name", "compact", "neuron_chunk"))
def _reuse(mask, token_mask_BxT, seg_BxT, *, windows, axis_name, compact, neuron_chunk) -> tuple[Array, Array]:
    mask_LxBxTxF = mask if mask.ndim == 4 else mask[None]
    _, batch, seq_len, num_units = mask_LxBxTxF.shape
    block = min(neuron_chunk, num_units)
    pos_T = jnp.arange(seq_len)
    # Real tokens first, in order (a stable sort): the w previous positions are then the
    # w previous real tokens. Without a token_mask every position is real already.
    order_BxT = jnp.argsort(~token_mask_BxT, axis=1, stable=True) if compact else None
    real_BxT = jnp.take_along_axis(token_mask_BxT, order_BxT, axis=1) if compact else token_mask_BxT
    if seg_BxT is None:
        start_BxT = jnp.zeros((batch, seq_len), jnp.int32)  # first position of t's sequence
    else:
        seg_BxT = jnp.take_along_axis(seg_BxT, order_BxT, axis=1) if compact else seg_BxT
        new_run_BxT = jnp.concatenate([jnp.ones((batch, 1), bool), seg_BxT[:, 1:] != seg_BxT[:, :-1]], axis=1)
        start_BxT = lax.cummax(jnp.where(new_run_BxT, pos_T, 0), axis=1)
    uniq = tuple(sorted(set(windows)))

    def within(d: int) -> Array:  # t − d is in t's sequence: (B, T, 1)
        return (pos_T - d >= start_BxT)[..., None]

    def block_counts(layer, i):  # (hits per window (W, B, T), |A_t| (B, T)) over one block of neurons
        first = jnp.minimum(i * block, num_units - block)  # the last block is clamped...
        a_BxTxC = lax.dynamic_slice(mask_LxBxTxF, (layer, 0, 0, first), (1, batch, seq_len, block))[0]
        a_BxTxC = a_BxTxC.astype(bool)
        a_BxTxC = a_BxTxC & (first + jnp.arange(block) >= i * block)  # ...and not recounted
        if compact:
            a_BxTxC = jnp.take_along_axis(a_BxTxC, order_BxT[..., None], axis=1)
        a_BxTxC = a_BxTxC & real_BxT[..., None]
        count = functools.partial(jnp.sum, axis=-1, dtype=jnp.int16 if block < 2**15 else jnp.int32)
        hits = []
        union_BxTxC, span = _shift(a_BxTxC, 1) & within(1), 1  # the union over `span` tokens
        for w in uniq:
            while 2 * span <= w:  # U_2s(t) = U_s(t) ∪ U_s(t − s), if t − s is in t's sequence
                union_BxTxC = union_BxTxC | (_shift(union_BxTxC, span) & within(span))
                span *= 2
            rest = w - span  # 0 <= rest < span: two overlapping unions of `span` tokens
            u_BxTxC = union_BxTxC if rest == 0 else union_BxTxC | (_shift(union_BxTxC, rest) & within(rest))
            hits.append(count(a_BxTxC & u_BxTxC).astype(jnp.int32))
        return jnp.stack(hits), count(a_BxTxC).astype(jnp.int32)

    def one_layer(layer):
        # Neurons in blocks: a union never mixes neurons, so memory stays at a few
        # (B, T, block) masks. The first block starts the carry (see _coactivation).
        step = lambda acc, i: (jax.tree.map(jnp.add, acc, block_counts(layer, i)), None)  # noqa: E731
        steps = -(-num_units // block)
        hits_WxBxT, n_active_BxT = lax.scan(step, block_counts(layer, 0), jnp.arange(1, steps))[0]
        counted_BxT = real_BxT & (pos_T > start_BxT) & (n_active_BxT > 0)
        inv_active_BxT = jnp.where(counted_BxT, 1.0 / jnp.maximum(n_active_BxT, 1), 0.0)
        reuse_W = jnp.sum(hits_WxBxT * inv_active_BxT, axis=(1, 2))
        active = jnp.sum(n_active_BxT.astype(jnp.float32)) / num_units
        return reuse_W, jnp.sum(counted_BxT, dtype=jnp.float32), active

    reuse_LxW, counted_L, active_L = psum(lax.map(one_layer, jnp.arange(mask_LxBxTxF.shape[0])), axis_name)
    n_real = psum(jnp.sum(token_mask_BxT, dtype=jnp.float32), axis_name)
    reuse_WxL = safe_div(reuse_LxW, counted_L[:, None]).T
    return reuse_WxL[jnp.array([uniq.index(w) for w in windows])], safe_div(active_L, n_real)


# ---- co-activation between neurons ----
def coactivation(
    mask: Array,
    token_mask: Array | None = None,
    axis_name: AxisName = None,
    *,
    chunk: int = 1024,
    neurons: int | Array | None = None,
    key: Array | None = None,
) -> Coactivation:
    """Co-activation matrix C[i, j] = #tokens with i and j active / #tokens with i active.

    ReLU² §4 (3), §5.3 (Fig. 7's adjacency matrix). Rows of neurons never active on a
    real token are 0; C[i, i] = 1 for the others. Counts are accumulated over token
    chunks (a scan over blocks of positions, each block one (tokens × n)ᵀ(tokens × n)
    product), so memory is O(n²) + O(chunk · F) whatever the number of tokens; layers
    run one after the other (lax.map). Counts are exact integers (int32). Under jit on
    arrays sharded over B each block's product is summed over devices; inside
    shard_map / pmap pass `axis_name` and the counts are psum'd once at the end.

    Args:
      mask: bool `mask_BxTxF` or `mask_LxBxTxF`, True = active.
      token_mask: `token_mask_BxT`, True on real tokens; None = all real.
      axis_name: mapped axis name(s) inside shard_map / pmap; counts are psum'd.
      chunk: tokens per step; each step takes max(1, chunk // B) positions of every row
        (so at least B tokens); T need not be a multiple (the last block is clamped and
        its already-counted positions masked).
      neurons: None = all F neurons; an int n = a uniform random subset of n neurons
        drawn without replacement with `key` (for large F); or explicit neuron ids.
        Rows / columns are in ascending neuron id, given in the result's `neurons`.
      key: PRNG key for the subsample; None = jax.random.key(0) (fixed, reproducible).

    Returns:
      Coactivation(matrix, counts, active_counts, neurons, tokens). Sum `counts` over
      calls and pass them to `coactivation_from_counts` to combine batches.
    """
    mask = jnp.asarray(mask)
    token_mask_BxT = _token_mask(mask, token_mask)
    num_units = mask.shape[-1]
    chunk = operator.index(chunk)
    if chunk < 1:
        raise UserError(f"Pass chunk as a positive number of tokens; got {chunk}.")
    if neurons is None:
        ids_N = None
    elif isinstance(neurons, (int, np.integer)) and not isinstance(neurons, bool):
        neurons = int(neurons)
        if not 1 <= neurons <= num_units:
            raise UserError(f"Pass neurons as a subsample size between 1 and F = {num_units}; got {neurons}.")
        key = jax.random.key(0) if key is None else key
        ids_N = jnp.sort(jax.random.choice(key, num_units, (neurons,), replace=False)).astype(jnp.int32)
    else:
        ids_N = jnp.asarray(neurons)
        if ids_N.ndim != 1 or not jnp.issubdtype(ids_N.dtype, jnp.integer) or ids_N.shape[0] < 1:
            raise UserError(f"Pass neurons as None, a subsample size or a 1-D array of neuron ids; got {neurons!r}.")
        ids_N = jnp.sort(ids_N).astype(jnp.int32)
    fn = functools.partial(_coactivation, chunk=chunk, axis_name=axis_name)
    counts, tokens = run_auto(fn, mask, token_mask_BxT, ids_N)
    counts = counts if mask.ndim == 4 else counts[0]
    ids_N = jnp.arange(num_units, dtype=jnp.int32) if ids_N is None else ids_N
    return Coactivation(coactivation_from_counts(counts), counts, jnp.diagonal(counts, axis1=-2, axis2=-1),
                        ids_N, tokens)


@functools.partial(jax.jit, static_argnames=("chunk", "axis_name"))
def _coactivation(mask, token_mask_BxT, ids_N, *, chunk, axis_name) -> tuple[Array, Array]:
    mask_LxBxTxF = mask if mask.ndim == 4 else mask[None]
    _, batch, seq_len, num_units = mask_LxBxTxF.shape
    n = num_units if ids_N is None else ids_N.shape[0]
    block = min(seq_len, max(1, chunk // batch))
    steps = -(-seq_len // block)
    # 0/1 products are exact in bf16 with float32 accumulation (MXU / tensor cores); the
    # CPU backend has no fast bf16 matmul, so float32 there.
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16

    def one_layer(layer):
        def block_counts(i):  # counts of positions [i·block, (i+1)·block) ∩ [0, T)
            start = jnp.minimum(i * block, seq_len - block)  # the last block is clamped...
            x_BxCxF = lax.dynamic_slice(mask_LxBxTxF, (layer, 0, start, 0), (1, batch, block, num_units))[0]
            keep_BxC = lax.dynamic_slice_in_dim(token_mask_BxT, start, block, axis=1)
            keep_BxC = keep_BxC & (start + jnp.arange(block) >= i * block)  # ...and not recounted
            if ids_N is not None:
                x_BxCxF = jnp.take(x_BxCxF, ids_N, axis=-1)
            x_BxCxN = (x_BxCxF.astype(bool) & keep_BxC[..., None]).astype(dtype)
            prod_NxN = jnp.einsum("bcf,bcg->fg", x_BxCxN, x_BxCxN, preferred_element_type=jnp.float32)
            return prod_NxN.astype(jnp.int32)

        # The first block starts the carry, so that it varies over the same mapped axes
        # as the data inside shard_map (a zeros carry would not).
        step = lambda count_NxN, i: (count_NxN + block_counts(i), None)  # noqa: E731
        return lax.scan(step, block_counts(0), jnp.arange(1, steps))[0]

    counts_LxNxN = psum(lax.map(one_layer, jnp.arange(mask_LxBxTxF.shape[0])), axis_name)
    return counts_LxNxN, psum(jnp.sum(token_mask_BxT, dtype=jnp.int32), axis_name)


def coactivation_from_counts(counts: Array) -> Array:
    """C from co-activation counts (..., n, n) (diagonal = active counts): float32, rows
    of never-active neurons 0. Counts summed over batches / devices combine exactly."""
    counts = jnp.asarray(counts)
    active_xN = jnp.diagonal(counts, axis1=-2, axis2=-1)
    return safe_div(counts.astype(jnp.float32), active_xN[..., :, None].astype(jnp.float32))


def coactivation_gap(matrix: Array, active: Array | None = None) -> Array:
    """Top-average co-activation gap of C (ReLU² §4 (3), Fig. 7), per layer.

    Over the rows R of active neurons (C[i, i] > 0, or `active` True), with n columns:
      gap = mean_{i∈R} max_{j≠i} C[i, j] − (Σ_{i∈R} Σ_{j≠i} C[i, j]) / (|R| · (n − 1)),
    i.e. the mean row maximum minus the mean of *all* off-diagonal entries of those rows
    (columns of never-active neurons included, as zeros). The diagonal (always 1) and
    rows of never-active neurons are left out of both terms.

    Args:
      matrix: C, (n, n) or (L, n, n), e.g. `coactivation(...).matrix`; n >= 2.
      active: bool (n,) or (L, n) rows to use; None = rows with C[i, i] > 0.
    Returns:
      float32 scalar or (L,); 0 where no row is active.
    """
    matrix = jnp.asarray(matrix, jnp.float32)
    if matrix.ndim not in (2, 3) or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] < 2:
        raise UserError(f"Pass the co-activation matrix as (n, n) or (L, n, n) with n >= 2; got {matrix.shape}.")
    if active is not None and jnp.shape(active) not in (matrix.shape[-1:], matrix.shape[:-1]):
        raise UserError(f"Pass active with shape {matrix.shape[:-1]} (one flag per row); got {jnp.shape(active)}.")
    return run_auto(_gap, matrix, active)


@jax.jit
def _gap(matrix, active) -> Array:
    n = matrix.shape[-1]
    active_xN = jnp.diagonal(matrix, axis1=-2, axis2=-1) > 0 if active is None else active.astype(bool)
    off_NxN = ~jnp.eye(n, dtype=bool)
    row_max_xN = jnp.max(jnp.where(off_NxN, matrix, -jnp.inf), axis=-1)
    row_sum_xN = jnp.sum(jnp.where(off_NxN, matrix, 0.0), axis=-1)
    rows = jnp.sum(active_xN, axis=-1, dtype=jnp.float32)
    top = safe_div(jnp.sum(jnp.where(active_xN, row_max_xN, 0.0), axis=-1), rows)
    average = safe_div(jnp.sum(jnp.where(active_xN, row_sum_xN, 0.0), axis=-1), rows * (n - 1))
    return top - average

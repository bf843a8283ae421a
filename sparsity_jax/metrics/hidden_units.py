"""Hidden-unit use of ReLU MLPs per token, sequence and batch (Wild & Anderson, 2024).

Metrics of "Uncovering Layer-Dependent Activation Sparsity Patterns in ReLU
Transformers" (W&A): §2.1 defines per-token / per-sequence / per-batch hidden-unit use
and the within-sequence use percentiles, Tables 1-3 report them, App. A.6 gives their
pseudocode. All are pure functions of the boolean hidden-unit mask, read once by
`sequence_unit_counts`; `hidden_unit_use` states the conventions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.reduce import AxisName, check_batch_rank, psum, real_tokens, safe_div

# The percentile index is computed in int32 from 100 * F (see _percentile_index).
_MAX_F = (2**31 - 1) // 100


def _as_layers(mask: jax.Array, token_mask: jax.Array | None) -> tuple[jax.Array, jax.Array, bool]:
    """Returns (`used_LxBxTxF` bool with padding cleared, `token_mask_BxT`, has_layers)."""
    mask = jnp.asarray(mask)
    check_batch_rank(mask, "the hidden-unit mask")
    has_layers = mask.ndim == 4
    mask_LxBxTxF = mask if has_layers else mask[None]
    token_mask_BxT = real_tokens(token_mask, mask_LxBxTxF.shape[1:3], f"the mask {mask.shape}")
    used_LxBxTxF = mask_LxBxTxF.astype(bool) & token_mask_BxT[None, :, :, None]
    return used_LxBxTxF, token_mask_BxT, has_layers


def _global_mean(value_LxB: jax.Array, weight_B: jax.Array, axis_name: AxisName) -> jax.Array:
    """Mean of value over the B entries where weight_B is True, over all devices; (L,)."""
    weight_B = weight_B.astype(jnp.float32)
    num_L = psum(jnp.sum(value_LxB * weight_B, axis=-1), axis_name)
    return safe_div(num_L, psum(jnp.sum(weight_B), axis_name))


def _explicit_shards(x: jax.Array, axis: int) -> int:
    """How many shards `axis` of x has in its type (Explicit mesh axes); 1 otherwise."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", ())
    entry = spec[axis] if axis < len(spec) else None
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(sharding.mesh.shape[name] for name in names)


def _group_any(x_LxBxF: jax.Array, groups: int) -> jax.Array:
    """OR over `groups` contiguous equal groups of axis 1: (L, B, F) -> (L, groups, F).

    A reshape unless that would split an explicitly sharded B unevenly (fewer groups
    than shards), which Explicit sharding rejects; then an OR against a one-hot
    (B, groups) group assignment, which costs an all-reduce of (L, groups, F).
    """
    num_layers, batch, num_units = x_LxBxF.shape
    if groups % _explicit_shards(x_LxBxF, axis=1) == 0:
        return jnp.any(x_LxBxF.reshape(num_layers, groups, batch // groups, num_units), axis=2)
    onehot_BxK = (jnp.arange(batch) // (batch // groups))[:, None] == jnp.arange(groups)
    return jnp.any(x_LxBxF[:, :, None, :] & onehot_BxK[None, :, :, None], axis=1)


def _batch_use(
    seq_used_LxBxF: jax.Array, seq_real_B: jax.Array, batch_groups: int, axis_name: AxisName
) -> jax.Array:
    """Per-batch use (L,): the global batch is cut into `batch_groups` contiguous groups.

    The global batch is the local B sequences times the number of devices on
    `axis_name`, in device order. Groups holding no real token are left out of the mean.
    """
    num_layers, batch, num_units = seq_used_LxBxF.shape
    batch_groups = operator.index(batch_groups)
    n_dev = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    global_batch = n_dev * batch
    if batch_groups < 1 or global_batch % batch_groups:
        raise UserError(
            f"Choose batch_groups dividing the global batch of {global_batch} sequences; "
            f"got {batch_groups}."
        )
    group_size = global_batch // batch_groups
    if batch % group_size == 0:  # Groups lie within one device: no cross-device OR.
        local_groups = batch // group_size
        used_LxKxF = _group_any(seq_used_LxBxF, local_groups)
        frac_LxK = jnp.mean(used_LxKxF, axis=-1, dtype=jnp.float32)
        real_K = _group_any(seq_real_B[None, :, None], local_groups)[0, :, 0]
        return _global_mean(frac_LxK, real_K, axis_name)
    if group_size % batch:
        raise UserError(
            f"Choose batch_groups so that each group holds whole device batches or a whole "
            f"number of groups fits in a device batch of {batch}; got {batch_groups}."
        )
    # Each group spans group_size // batch devices: OR within a group by a psum of counts.
    group = jax.lax.axis_index(axis_name) // (group_size // batch)
    onehot_G = jnp.arange(batch_groups) == group
    used_LxF = jnp.any(seq_used_LxBxF, axis=1)
    mine_LxGxF = onehot_G[None, :, None] & used_LxF[:, None, :]
    count_LxGxF = psum(mine_LxGxF.astype(jnp.int32), axis_name)
    real_G = psum((onehot_G & jnp.any(seq_real_B)).astype(jnp.int32), axis_name) > 0
    frac_LxG = jnp.mean(count_LxGxF > 0, axis=-1, dtype=jnp.float32)
    return safe_div(jnp.sum(frac_LxG * real_G, axis=-1), jnp.sum(real_G))


def hidden_unit_use(
    mask: jax.Array,
    token_mask: jax.Array | None = None,
    axis_name: AxisName = None,
    *,
    batch_groups: int = 1,
) -> dict[str, jax.Array]:
    """Per-token, per-sequence and per-batch hidden-unit use (W&A §2.1, Table 1, A.6.2).

    Conventions of every function of this module: they are pure, take the boolean
    hidden-unit mask (`mask_BxTxF`, or `mask_LxBxTxF` for all L layers at once; any
    non-bool array counts its non-zero entries as used, which for post-ReLU activations
    is "> 0") and an explicit `token_mask_BxT` (padding never counts; None = every token
    is real). Every returned use value is a fraction of F in [0, 1]; percentiles are
    fractions of a sequence's real length.

    Where the reductions happen:
      * plain arrays, or `jax.jit` on arrays sharded over B (GSPMD makes the reductions
        global): leave `axis_name=None`;
      * inside `jax.shard_map` / `jax.pmap` on the local shard of the batch: pass the
        mapped axis name(s) as `axis_name`. Means are global means (numerators and
        denominators are psum'd, never a mean of per-device means) and "used anywhere"
        is an OR over devices.
    All three settings give the same numbers for the same arguments.

    Args:
      mask: `mask_BxTxF` or `mask_LxBxTxF`, True where a hidden unit is used (> 0).
      token_mask: `token_mask_BxT`, True on real tokens; None = all real.
      axis_name: mapped axis name(s) when called inside shard_map / pmap on the local
        batch shard; None for plain or jit-sharded global arrays.
      batch_groups: how many contiguous, equal groups of sequences the global batch
        (B, times the devices on `axis_name`) is cut into; each group is one "batch"
        for `per_batch`, which is then averaged over the groups that hold a real token.
        1 (default) = the whole global batch. The paper's batch is the per-device batch
        (16 x 512 tokens, §2.1): pass the number of devices — inside shard_map
        `jax.lax.axis_size(axis_name)` — and the plain, jit and shard_map settings all
        give the per-device numbers. Static.

    Returns:
      Fractions of F, shape (L,) for an (L, B, T, F) mask, else scalars:
      `per_token` (units used per real token, mean over all real tokens),
      `per_sequence` (units used anywhere in a sequence's real tokens, mean over
      sequences with >= 1 real token), `per_batch` (see batch_groups), and the ratios
      of Table 1 `token_over_sequence` = per_token / per_sequence and
      `sequence_over_batch` = per_sequence / per_batch (0 where the divisor is 0).
    """
    count_LxBxF, length_B, has_layers = sequence_unit_counts(mask, token_mask, keep_layer_axis=True)
    out = use_from_counts(count_LxBxF, length_B, axis_name, batch_groups=batch_groups)
    return out if has_layers else {k: v[0] for k, v in out.items()}


def _count_over_tokens(used_LxBxTxF: jax.Array) -> jax.Array:
    """Sum over T in int32, computed in narrow integers first: exact, and it keeps the
    (L, B, T, F) intermediate at one byte per entry where the backend materialises the
    converted mask before reducing (XLA:CPU does; an int32 copy cost 4x the mask's bytes
    and made metrics-every-step 7% slower). Chunks of c <= 127 tokens are summed in
    int8, then the chunk sums in int32; without a divisor c >= 32 of T, in int16
    (T < 2**15) or int32."""
    num_layers, batch, seq_len, num_units = used_LxBxTxF.shape
    chunk = max(c for c in range(1, 128) if seq_len % c == 0)
    if chunk >= 32:
        chunks = used_LxBxTxF.reshape(num_layers, batch, seq_len // chunk, chunk, num_units)
        return jnp.sum(jnp.sum(chunks, axis=3, dtype=jnp.int8), axis=2, dtype=jnp.int32)
    acc = jnp.int16 if seq_len <= jnp.iinfo(jnp.int16).max else jnp.int32
    return jnp.sum(used_LxBxTxF, axis=2, dtype=acc).astype(jnp.int32)


def sequence_unit_counts(
    mask: jax.Array, token_mask: jax.Array | None = None, *, keep_layer_axis: bool = False
):
    """Per-sequence use counts: `count_LxBxF[l, b, f]` = real tokens of sequence b using
    unit f (int32), and `length_B` = real tokens per sequence. The one pass over the mask
    that every metric of this module needs (W&A A.6: `np.sum(seq, axis=0)` per sequence).

    Every metric here is a function of these counts and the real lengths. The
    `*_from_counts` functions take them directly, so a train step that wants several
    metrics reads the (L, B, T, F) mask once (`train/units.py`); `hidden_unit_use` and
    friends are the same functions behind this one reduction.

    Returns (count_LxBxF or count_BxF for a 3-D mask, length_B); with
    `keep_layer_axis=True` (count_LxBxF, length_B, has_layers).
    """
    used_LxBxTxF, token_mask_BxT, has_layers = _as_layers(mask, token_mask)
    count_LxBxF = _count_over_tokens(used_LxBxTxF)
    length_B = jnp.sum(token_mask_BxT, axis=-1, dtype=jnp.int32)
    if keep_layer_axis:
        return count_LxBxF, length_B, has_layers
    return (count_LxBxF if has_layers else count_LxBxF[0]), length_B


def use_from_counts(
    count_LxBxF: jax.Array, length_B: jax.Array, axis_name: AxisName = None, *, batch_groups: int = 1
) -> dict[str, jax.Array]:
    """`hidden_unit_use` from `sequence_unit_counts` output ((L, B, F) counts); (L,) each."""
    num_units = count_LxBxF.shape[-1]
    seq_used_LxBxF = count_LxBxF > 0
    seq_real_B = length_B > 0
    per_batch_L = _batch_use(seq_used_LxBxF, seq_real_B, batch_groups, axis_name)
    seq_frac_LxB = jnp.mean(seq_used_LxBxF, axis=-1, dtype=jnp.float32)
    per_sequence_L = _global_mean(seq_frac_LxB, seq_real_B, axis_name)
    # Per-sequence sums of per-token counts stay below T * F, exact in int32.
    count_LxB = jnp.sum(count_LxBxF, axis=-1, dtype=jnp.int32)
    tokens = psum(jnp.sum(length_B, dtype=jnp.int32), axis_name)
    per_token_L = safe_div(psum(jnp.sum(count_LxB / num_units, axis=-1), axis_name), tokens)
    return {
        "per_token": per_token_L,
        "per_sequence": per_sequence_L,
        "per_batch": per_batch_L,
        "token_over_sequence": safe_div(per_token_L, per_sequence_L),
        "sequence_over_batch": safe_div(per_sequence_L, per_batch_L),
    }


def _percentile_index(n_used: jax.Array, num_units: int, p: int) -> tuple[jax.Array, jax.Array]:
    """Index (lo, t) of np.percentile(x, q, method='linear') over F sorted values.

    q = p * f + 100 * (1 - f) with f = n_used / F (A.6.1), so the fractional index
    q / 100 * (F - 1) = (F - 1) - s with s = r (F - 1) / (100 F), r = n_used (100 - p).
    float32 cannot resolve that index at F = 32768 (ulp 0.004), so s is split exactly in
    int32: with r = 100 a + b, s = a + (b F - r) / (100 F). The value is then
    x[lo] + (x[lo + 1] - x[lo]) * t.
    """
    r = n_used * (100 - p)
    den = 100 * num_units
    m = (r % 100) * num_units - r
    k = jnp.floor_divide(m, den)  # -1 or 0
    rem = m - k * den  # s = (r // 100 + k) + rem / den, rem in [0, den)
    lo = (num_units - 1) - (r // 100 + k) - (rem > 0).astype(jnp.int32)
    t = jnp.where(rem > 0, (den - rem).astype(jnp.float32) / den, 0.0)
    return lo, t


def sequence_use_percentiles(
    mask: jax.Array,
    percentiles: Sequence[int] = (50, 65, 75, 90),
    token_mask: jax.Array | None = None,
    axis_name: AxisName = None,
) -> dict[int, jax.Array]:
    """Within-sequence use frequency of the p-th percentile used unit (W&A A.6.1, Table 3).

    Per sequence (its real tokens only) and layer: count per unit the tokens that use it
    (`count_F`); f = fraction of units with count > 0; the paper's value is
    `np.percentile(count_F, p * f + 100 * (1 - f)) / length` (default linear
    interpolation), i.e. the p-th percentile among units used at least once, taken as
    a rescaled percentile over all F counts. The zeros sort below the used units, but
    the rescaled index lags the used subset's own percentile index by
    (1 - f)(1 - p/100) < 1 rank, so it can interpolate towards a zero count (visible
    for small F); we follow the paper's formula, not the subset percentile. Counts are
    of the 0/1 mask (the pseudocode sums `seq`, which must be the 0/1 use indicator to
    be "what fraction of tokens", §2.1). `length` is the sequence's real length (the
    pseudocode's `seq.shape[0]` of an unpadded sequence).
    The value is averaged over sequences with >= 1 real token (globally under
    `axis_name`). A sequence using no unit scores 0.

    Args:
      mask: `mask_BxTxF` or `mask_LxBxTxF` (used units True).
      percentiles: integers p in [0, 100].
      token_mask: `token_mask_BxT` (True = real token); None = all real.
      axis_name: mapped axis name(s) inside shard_map / pmap; None otherwise.

    Returns:
      {p: fraction of tokens in [0, 1]}, each of shape (L,) or scalar.
    """
    count_LxBxF, length_B, has_layers = sequence_unit_counts(mask, token_mask, keep_layer_axis=True)
    out = percentiles_from_counts(count_LxBxF, length_B, percentiles, axis_name)
    return out if has_layers else {p: v[0] for p, v in out.items()}


def percentiles_from_counts(
    count_LxBxF: jax.Array, length_B: jax.Array, percentiles: Sequence[int] = (50, 65, 75, 90),
    axis_name: AxisName = None,
) -> dict[int, jax.Array]:
    """`sequence_use_percentiles` from `sequence_unit_counts` output; {p: (L,)}."""
    num_units = count_LxBxF.shape[-1]
    if num_units > _MAX_F:
        raise UserError(f"sequence_use_percentiles supports F <= {_MAX_F}; got F = {num_units}.")
    sorted_LxBxF = jnp.sort(count_LxBxF, axis=-1)
    n_used_LxB = jnp.sum(count_LxBxF > 0, axis=-1, dtype=jnp.int32)
    seq_real_B = length_B > 0
    out = {}
    for p in percentiles:
        p = operator.index(p)
        if not 0 <= p <= 100:
            raise UserError(f"Pass percentiles as integers in [0, 100]; got {p}.")
        lo_LxB, t_LxB = _percentile_index(n_used_LxB, num_units, p)
        hi_LxB = jnp.minimum(lo_LxB + 1, num_units - 1)
        x_lo = jnp.take_along_axis(sorted_LxBxF, lo_LxB[..., None], axis=-1)[..., 0]
        x_hi = jnp.take_along_axis(sorted_LxBxF, hi_LxB[..., None], axis=-1)[..., 0]
        value_LxB = x_lo + (x_hi - x_lo) * t_LxB
        frac_LxB = value_LxB / jnp.maximum(length_B, 1)
        out[p] = _global_mean(frac_LxB, seq_real_B, axis_name)
    return out


def units_used(
    mask: jax.Array, token_mask: jax.Array | None = None, axis_name: AxisName = None
) -> jax.Array:
    """Units used by any real token of the (global) batch: bool `used_LxF` or `used_F`.

    The per-batch "on" set of W&A §4.1 (dead-unit masking) and Table 2.
    """
    count_LxBxF, _, has_layers = sequence_unit_counts(mask, token_mask, keep_layer_axis=True)
    used_LxF = used_from_counts(count_LxBxF, axis_name)
    return used_LxF if has_layers else used_LxF[0]


def used_from_counts(count_LxBxF: jax.Array, axis_name: AxisName = None) -> jax.Array:
    """`units_used` from `sequence_unit_counts` output: bool (L, F)."""
    used_LxF = jnp.any(count_LxBxF > 0, axis=1)
    if axis_name is not None:
        used_LxF = jax.lax.pmax(used_LxF.astype(jnp.int32), axis_name) > 0
    return used_LxF


def init_unit_tracking(used_LxF: jax.Array) -> dict[str, jax.Array]:
    """Tracking state from the units used in the first training batch (W&A Table 2).

    Returns {"first": used_LxF, "ever": used_LxF} (bool, the cumulative OR so far).
    Works on any leading shape, e.g. `used_F` for one layer.
    """
    used_LxF = jnp.asarray(used_LxF, dtype=bool)
    return {"first": used_LxF, "ever": used_LxF}


def unit_tracking_update(
    state: dict[str, jax.Array], used_LxF: jax.Array
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Adds one batch's used units to the state; returns (new_state, stats).

    Stats per layer, fractions of F with shape (L,) (W&A Table 2 columns):
    `on_in_first` (used in the first batch), `turned_on` (used now, not in the first
    batch), `turned_off` (used in the first batch, not now), `current` (used now
    = on_in_first + turned_on - turned_off) and `ever_used` (used in any batch so far).
    """
    used_LxF = jnp.asarray(used_LxF, dtype=bool)
    first_LxF = state["first"]
    ever_LxF = state["ever"] | used_LxF

    def frac(x_LxF: jax.Array) -> jax.Array:
        return jnp.mean(x_LxF, axis=-1, dtype=jnp.float32)

    stats = {
        "on_in_first": frac(first_LxF),
        "turned_on": frac(used_LxF & ~first_LxF),
        "turned_off": frac(first_LxF & ~used_LxF),
        "current": frac(used_LxF),
        "ever_used": frac(ever_LxF),
    }
    return {"first": first_LxF, "ever": ever_LxF}, stats

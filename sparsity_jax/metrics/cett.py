"""CETT — cumulative error of tail truncation (ReLU² §3, Sparsing Law Eq. 3).

With neuron outputs n_i = a_i · w_out[i] and the inactive set D_t = {i : ‖n_i‖ < t},
one token's CETT is ‖Σ_{i∈D_t} n_i‖ / ‖FFN(x)‖ and a layer's CETT its mean over the
real tokens. `cett` evaluates it at one threshold (and states the conventions of every
function here), `cett_curve` at many. The exact threshold search for a target CETT
lives in `threshold_search.py`.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from sparsity_jax.errors import UserError

Array = jax.Array
AxisName = str | tuple[str, ...] | None

# Everything is computed in float32 with HIGHEST matmul precision (no TF32/bf16 passes
# on GPU/TPU).
PRECISION = lax.Precision.HIGHEST
# Thresholds per lax.map step in cett_curve: bounds the (batch, N, F) masked copies.
_CURVE_BATCH = 8


class CettCurve(NamedTuple):
    """CETT and sparsity at each threshold; shape (T,) or (L, T)."""

    cett: Array
    sparsity: Array


class Layer(NamedTuple):
    """One layer's data prepared once for many truncated-product evaluations."""

    a_NxF: Array  # float32 activation scores, tokens flattened
    w_out_FxD: Array  # float32 output kernel
    mag_NxF: Array  # ‖n_i‖; +inf on padding tokens (never below a threshold)
    inv_norm_N: Array  # 1/‖FFN(x)‖ on counted tokens, 0 elsewhere
    real_N: Array  # bool: real (non-padding) tokens
    n_valid: Array  # float32: counted tokens (real and FFN output ≠ 0)
    n_real: Array  # float32: real tokens


def neuron_magnitudes(a: Array, w_out: Array) -> Array:
    """‖n_i‖ = |a_i| · ‖w_out[i, :]‖₂ for every token and neuron, without forming n_i.

    Args:
      a: activation scores (..., F); with a layer axis (L, ..., F).
      w_out: output kernel (F, d), or (L, F, d) matching a's leading layer axis.
    Returns:
      float32 array with the shape of `a`.
    """
    w_norm = jnp.linalg.norm(jnp.asarray(w_out, jnp.float32), axis=-1)
    # (L, F) -> (L, 1, ..., 1, F) so that it broadcasts over a's token axes.
    w_norm = w_norm.reshape(w_norm.shape[:-1] + (1,) * (a.ndim - w_norm.ndim) + w_norm.shape[-1:])
    return jnp.abs(jnp.asarray(a, jnp.float32)) * w_norm


def run_auto(fn, *args, out_sharding=None):
    """fn(*args); inputs sharded over *explicit* mesh axes (the `jax.make_mesh` default)
    are handled in auto (GSPMD) mode for those axes, so that products contracting a
    sharded F axis, sorts, gathers and reshapes partition without per-op annotations.
    Outputs come back with `out_sharding` (a PartitionSpec prefix; None = replicated,
    right for small results). Without explicit axes (plain arrays, auto meshes, inside
    shard_map) this is just fn(*args).
    """
    for x in jax.tree.leaves(args):
        mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
        explicit = tuple(
            name for name, kind in zip(getattr(mesh, "axis_names", ()), getattr(mesh, "axis_types", ()))
            if kind == jax.sharding.AxisType.Explicit
        )
        if explicit:
            out = PartitionSpec() if out_sharding is None else out_sharding
            with jax.sharding.use_abstract_mesh(mesh):
                return jax.sharding.auto_axes(fn, axes=explicit, out_sharding=out)(*args)
    return fn(*args)


def as_layers(a: Array, w_out: Array, token_mask: Array | None) -> tuple[Array, Array, Array, bool]:
    """Checks shapes; returns (a_LxNxF, w_out_LxFxD, token_mask_N bool, has_layer_axis)."""
    a, w_out = jnp.asarray(a), jnp.asarray(w_out)
    if w_out.ndim not in (2, 3):
        raise UserError(f"Pass w_out as (F, d) or (L, F, d); got shape {w_out.shape}.")
    layered = w_out.ndim == 3
    n_lead = 1 if layered else 0
    if a.ndim < n_lead + 2 or a.shape[-1] != w_out.shape[-2] or (layered and a.shape[0] != w_out.shape[0]):
        want = "(L, tokens..., F) with L, F" if layered else "(tokens..., F) with F"
        raise UserError(
            f"Pass a as {want} matching w_out {w_out.shape}; got a with shape {a.shape}."
        )
    token_shape = a.shape[n_lead:-1]
    if token_mask is None:
        mask_N = jnp.ones((math.prod(token_shape),), bool)
    else:
        token_mask = jnp.asarray(token_mask)
        if token_mask.shape != token_shape:
            raise UserError(
                f"Pass token_mask with the token shape {token_shape} of a {a.shape}; "
                f"got {token_mask.shape}."
            )
        mask_N = token_mask.reshape(-1).astype(bool)
    F = a.shape[-1]
    a_LxNxF = a.reshape((a.shape[0] if layered else 1, -1, F))
    w_out_LxFxD = w_out if layered else w_out[None]
    return a_LxNxF, w_out_LxFxD, mask_N, layered


def per_layer_values(x: Array | float, n_layers: int, layered: bool, what: str) -> Array:
    """Broadcasts a scalar or per-layer (L, ...) value to a leading L axis (float32)."""
    x = jnp.asarray(x, jnp.float32)
    if not layered:
        return x[None]
    if x.ndim == 0:
        return jnp.broadcast_to(x, (n_layers,))
    if x.shape[0] not in (1, n_layers):
        raise UserError(
            f"Pass {what} as a scalar or with a leading layer axis of size {n_layers}; got shape {x.shape}."
        )
    return jnp.broadcast_to(x, (n_layers,) + x.shape[1:])


def prepare_layer(a_NxF: Array, w_out_FxD: Array, mask_N: Array) -> Layer:
    """Magnitudes, dense-output norms and token counts of one layer (one dense product)."""
    a_NxF = a_NxF.astype(jnp.float32)
    w_out_FxD = w_out_FxD.astype(jnp.float32)
    mag_NxF = jnp.where(mask_N[:, None], neuron_magnitudes(a_NxF, w_out_FxD), jnp.inf)
    full_NxD = jnp.matmul(a_NxF, w_out_FxD, precision=PRECISION)
    norm_N = jnp.linalg.norm(full_NxD, axis=-1)
    valid_N = mask_N & (norm_N > 0)
    inv_norm_N = jnp.where(valid_N, 1.0 / jnp.where(valid_N, norm_N, 1.0), 0.0)
    return Layer(
        a_NxF, w_out_FxD, mag_NxF, inv_norm_N, mask_N,
        jnp.sum(valid_N, dtype=jnp.float32), jnp.sum(mask_N, dtype=jnp.float32),
    )


def truncated(layer: Layer, threshold: Array) -> tuple[Array, Array, Array]:
    """One truncated-product evaluation at `threshold`.

    The truncated sum is computed as (a · 1[‖n‖ < t]) @ w_out: an (N, F) x (F, d)
    product, never an (N, F, d) tensor.

    Returns (sum over counted tokens of ‖Σ_{‖n_i‖<t} n_i‖/‖FFN(x)‖, number of dropped real
    token×neuron pairs (int32), the truncated sums trunc_NxD).
    """
    drop_NxF = layer.mag_NxF < threshold
    trunc_NxD = jnp.matmul(jnp.where(drop_NxF, layer.a_NxF, 0.0), layer.w_out_FxD, precision=PRECISION)
    ratio_sum = jnp.sum(jnp.linalg.norm(trunc_NxD, axis=-1) * layer.inv_norm_N)
    return ratio_sum, jnp.sum(drop_NxF, dtype=jnp.int32), trunc_NxD


def _psum(x, axis_name: AxisName):
    return x if axis_name is None else lax.psum(x, axis_name)


def mean_or_zero(num: Array, den: Array) -> Array:
    """num / den, and 0 where den == 0."""
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)


def cett(
    a: Array,
    w_out: Array,
    threshold: Array | float,
    token_mask: Array | None = None,
    axis_name: AxisName = None,
) -> Array:
    """The layer's CETT at `threshold`: mean over real tokens of ‖Σ_{‖n_i‖<t} n_i‖ / ‖Σ_i n_i‖.

    Neuron decomposition of an FFN with activation scores `a` (..., F) and output kernel
    `w_out` (F, d) (Flax layout: row i is neuron i's output vector):
      n_i = a_i · w_out[i],  FFN(x) = Σ_i n_i = a @ w_out,  ‖n_i‖ = |a_i| · ‖w_out[i]‖₂.
    For a threshold t the inactive set is D_t = {i : ‖n_i‖ < t} and one token's CETT is
    ‖Σ_{i∈D_t} n_i‖ / ‖FFN(x)‖. The layer's CETT is the mean of that ratio over the real
    tokens (`token_mask`), which is what the reference code reports.

    Conventions shared by every function of this module:
      * tokens first: `a` is (N, F), (B, T, F), ...; with a layer axis `a` is
        (L, ..., F) and `w_out` is (L, F, d) — one result per layer.
      * tokens whose FFN output is exactly zero (e.g. all-zero activations) have no
        CETT; they are left out of the mean (never NaN). With no such token left the
        CETT is 0.
      * padding tokens (token_mask False) never count, neither in CETT nor in sparsity.
      * `axis_name` (inside shard_map / pmap, tokens split over that mesh axis and every
        shard holding all F neurons): numerators and denominators are psum'd, so the
        result is the global token mean. Under plain `jit` on globally sharded arrays
        leave it None — XLA makes the reductions global.

    Args:
      a: activation scores (tokens..., F), or (L, tokens..., F) with a layer axis.
      w_out: output kernel (F, d), or (L, F, d).
      threshold: magnitude threshold t (neurons with ‖n_i‖ < t are dropped); a scalar,
        or (L,) per layer.
      token_mask: bool (tokens...), True for real tokens; None = all real.
      axis_name: mesh axis the tokens are split over inside shard_map/pmap, or None.
    Returns:
      float32 scalar, or (L,). Tokens with a zero FFN output are left out; 0 when no
      token is left.
    """
    threshold = jnp.asarray(threshold, jnp.float32)
    return run_auto(lambda *args: _cett(*args, axis_name=axis_name), a, w_out, threshold, token_mask)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _cett(a, w_out, threshold, token_mask, axis_name: AxisName) -> Array:
    a_LxNxF, w_out_LxFxD, mask_N, layered = as_layers(a, w_out, token_mask)
    t_L = per_layer_values(threshold, a_LxNxF.shape[0], layered, "threshold")
    if t_L.ndim != 1:
        raise UserError(f"Pass threshold as a scalar or (L,); got shape {jnp.shape(threshold)}.")

    def one_layer(a_NxF, w_out_FxD, t):
        layer = prepare_layer(a_NxF, w_out_FxD, mask_N)
        return truncated(layer, t)[0], layer.n_valid

    sum_L, n_L = _psum(jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD, t_L), axis_name)
    cett_L = mean_or_zero(sum_L, n_L)
    return cett_L if layered else cett_L[0]


def cett_curve(
    a: Array,
    w_out: Array,
    thresholds: Array,
    token_mask: Array | None = None,
    axis_name: AxisName = None,
) -> CettCurve:
    """CETT and sparsity at many thresholds, for CETT-vs-sparsity plots.

    Evaluates the thresholds in vmapped batches of 8 (lax.map), so memory stays at a
    few (N, F) masked copies whatever the number of thresholds.

    Args:
      a, w_out, token_mask, axis_name: as in `cett`.
      thresholds: (T,) magnitude thresholds, or (L, T) per layer.
    Returns:
      CettCurve(cett, sparsity), each (T,) or (L, T); sparsity = fraction of real
      token×neuron pairs with ‖n_i‖ < t.
    """
    thresholds = jnp.asarray(thresholds, jnp.float32)
    return run_auto(lambda *args: _cett_curve(*args, axis_name=axis_name), a, w_out, thresholds, token_mask)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _cett_curve(a, w_out, thresholds, token_mask, axis_name: AxisName) -> CettCurve:
    a_LxNxF, w_out_LxFxD, mask_N, layered = as_layers(a, w_out, token_mask)
    if thresholds.ndim not in ((1, 2) if layered else (1,)):
        raise UserError(f"Pass thresholds as (T,){' or (L, T)' if layered else ''}; got shape {thresholds.shape}.")
    if thresholds.ndim == 2 and thresholds.shape[0] not in (1, a_LxNxF.shape[0]):
        raise UserError(f"Pass per-layer thresholds as (L, T) with L = {a_LxNxF.shape[0]}; got {thresholds.shape}.")
    t_LxT = jnp.broadcast_to(thresholds, a_LxNxF.shape[:1] + thresholds.shape[-1:])
    F = a_LxNxF.shape[-1]

    def one_layer(a_NxF, w_out_FxD, t_T):
        layer = prepare_layer(a_NxF, w_out_FxD, mask_N)
        sums_T, dropped_T = lax.map(lambda t: truncated(layer, t)[:2], t_T, batch_size=_CURVE_BATCH)
        return sums_T, dropped_T.astype(jnp.float32), layer.n_valid, layer.n_real * F

    sum_LxT, dropped_LxT, n_L, pairs_L = _psum(jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD, t_LxT), axis_name)
    curve = CettCurve(mean_or_zero(sum_LxT, n_L[:, None]), mean_or_zero(dropped_LxT, pairs_L[:, None]))
    return curve if layered else CettCurve(curve.cett[0], curve.sparsity[0])

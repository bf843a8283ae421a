"""CETT — cumulative error of tail truncation (ReLU² §3, Sparsing Law Eq. 3).

With neuron outputs n_i = a_i · w_out[i] and the inactive set D_t = {i : ‖n_i‖ < t}
(the neurons `nn.sparsify.threshold_keep` does not keep),
one token's CETT is ‖Σ_{i∈D_t} n_i‖ / ‖FFN(x)‖ and a layer's CETT its mean over the
real tokens. `cett` evaluates it at one threshold (and states the conventions of every
function here), `cett_curve` at many. The exact threshold search for a target CETT
lives in `threshold_search.py`. Counts of token×neuron pairs pass 2³¹ at pod scale
(N·F), so they are kept exact in two int32 words (`count_words`), without jax_enable_x64.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.reduce import AxisName, psum, real_tokens, safe_div
from sparsity_jax.nn.sparsify import magnitudes, out_norms, threshold_keep

Array = jax.Array

# Everything is computed in float32 with HIGHEST matmul precision (no TF32/bf16 passes
# on GPU/TPU).
PRECISION = lax.Precision.HIGHEST
# Thresholds per lax.map step in cett_curve: bounds the (batch, N, F) masked copies.
_CURVE_BATCH = 8
# Exact counts: value = hi·2¹⁶ + lo with 0 ≤ lo < 2¹⁶ (two int32 words, up to 2⁴⁷).
_LOW_BITS = 16
_LOW = (1 << _LOW_BITS) - 1
_CHUNK = 1 << 15  # low parts (< 2¹⁶) summed per int32 partial sum: < 2³¹


class CettCurve(NamedTuple):
    """CETT and sparsity at each threshold; shape (T,) or (L, T)."""

    realised_cett: Array
    sparsity: Array


class Axes(NamedTuple):
    """Mesh axes a kernel's arrays are split over inside shard_map / pmap (None: not split):
    `tokens` splits the token axis, `neurons` the F axis (then the products a @ w_out are
    psum'd over it, so every token's truncated sum is complete on every neuron shard)."""

    tokens: AxisName = None
    neurons: AxisName = None

    @property
    def every(self) -> AxisName:
        """Both axes at once (for pair counts and extrema)."""
        names = tuple(n for ax in self for n in ((ax,) if isinstance(ax, str) else ax or ()))
        return names or None


class Layer(NamedTuple):
    """One layer's data prepared once for many truncated-product evaluations (on a mesh:
    this device's tokens × neurons)."""

    a_NxF: Array  # activation scores as stored (float32 or bfloat16), tokens flattened
    w_out_FxD: Array  # float32 output kernel rows of these neurons
    w_norm_F: Array  # ‖w_out[i]‖₂
    inv_norm_N: Array  # 1/‖FFN(x)‖ on counted tokens (real, FFN output ≠ 0), 0 elsewhere
    real_N: Array  # bool: real (non-padding) tokens


# ----- exact pair counts in two int32 words -------------------------------------------------

def normalise_words(w_X2: Array) -> Array:
    """Carries the low word into the high one: (..., 2) int32 with 0 ≤ lo < 2¹⁶ (negative
    values keep a negative high word)."""
    hi, lo = w_X2[..., 0], w_X2[..., 1]
    return jnp.stack([hi + (lo >> _LOW_BITS), lo & _LOW], axis=-1)


def sum_words(x: Array) -> Array:
    """Exact Σ x over all entries of non-negative int32 `x` (each < 2³¹, total < 2⁴⁷) as
    (2,) words. The high parts sum to ≤ total/2¹⁶ < 2³¹; the low parts are summed in
    chunks of 2¹⁵ (each chunk < 2³¹), whose sums are split again."""
    x_N = x.reshape(-1)
    chunks = max(1, -(-x_N.shape[0] // _CHUNK))
    x_N = jnp.pad(x_N, (0, chunks * _CHUNK - x_N.shape[0]))
    lo_C = jnp.sum((x_N & _LOW).reshape(chunks, _CHUNK), axis=1)
    hi = jnp.sum(x_N >> _LOW_BITS) + jnp.sum(lo_C >> _LOW_BITS)
    return normalise_words(jnp.stack([hi, jnp.sum(lo_C & _LOW)]))


def count_words(flags_NxF: Array) -> Array:
    """Exact number of True entries of a (..., F) bool array as (2,) int32 words (per-row
    counts ≤ F in int32, then `sum_words`)."""
    return sum_words(jnp.sum(flags_NxF, axis=-1, dtype=jnp.int32))


def psum_words(w_X2: Array, axis_name: AxisName) -> Array:
    """Exact sum of words over devices (< 2¹⁵ devices: the low words stay < 2³¹)."""
    return normalise_words(psum(w_X2, axis_name))


def add_words(a_X2: Array, b_X2: Array) -> Array:
    return normalise_words(a_X2 + b_X2)


def sub_words(a_X2: Array, b_X2: Array) -> Array:
    return normalise_words(a_X2 - b_X2)


def words_float(w_X2: Array) -> Array:
    """float32 value of words (exact below 2²⁴, relative error 2⁻²⁴ above)."""
    return w_X2[..., 0].astype(jnp.float32) * float(1 << _LOW_BITS) + w_X2[..., 1].astype(jnp.float32)


def words_min(w_X2: Array, cap: int) -> Array:
    """min(value, cap) as int32, exact for values ≥ −2³⁰ (0 ≤ cap < 2³⁰)."""
    hi, lo = w_X2[..., 0], w_X2[..., 1]
    small = jnp.clip(hi, -(1 << 14), (cap >> _LOW_BITS) + 1) * (1 << _LOW_BITS) + lo  # no overflow
    return jnp.minimum(small, cap)


# ----- layers, magnitudes, truncated products -----------------------------------------------

def neuron_magnitudes(a: Array, w_out: Array) -> Array:
    """‖n_i‖ = |a_i| · ‖w_out[i, :]‖₂ for every token and neuron, without forming n_i.

    Args:
      a: activation scores (..., F); with a layer axis (L, ..., F).
      w_out: output kernel (F, d), or (L, F, d) matching a's leading layer axis.
    Returns:
      float32 array with the shape of `a`.
    """
    a, w_norm = jnp.asarray(a), out_norms(w_out)
    # (L, F) -> (L, 1, ..., 1, F) so that it broadcasts over a's token axes.
    return magnitudes(a, w_norm.reshape(w_norm.shape[:-1] + (1,) * (a.ndim - w_norm.ndim) + w_norm.shape[-1:]))


def layer_magnitudes(layer: Layer) -> Array:
    """‖n_i‖ of a prepared layer, (N, F) float32; +inf on padding tokens (never below a
    threshold). Recomputed where used (one fused elementwise op), never stored."""
    return jnp.where(layer.real_N[:, None], magnitudes(layer.a_NxF, layer.w_norm_F), jnp.inf)


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
    check_shapes(a.shape, w_out.shape)
    layered = w_out.ndim == 3
    mask_N = real_tokens(token_mask, a.shape[(1 if layered else 0):-1], f"a {a.shape}").reshape(-1)
    F = a.shape[-1]
    a_LxNxF = a.reshape((a.shape[0] if layered else 1, -1, F))
    w_out_LxFxD = w_out if layered else w_out[None]
    return a_LxNxF, w_out_LxFxD, mask_N, layered


def check_shapes(a_shape: tuple, w_shape: tuple) -> None:
    """UserError unless a is (tokens..., F) with w_out (F, d), or (L, tokens..., F) with (L, F, d)."""
    if len(w_shape) not in (2, 3):
        raise UserError(f"Pass w_out as (F, d) or (L, F, d); got shape {w_shape}.")
    layered = len(w_shape) == 3
    if len(a_shape) < len(w_shape) or a_shape[-1] != w_shape[-2] or (layered and a_shape[0] != w_shape[0]):
        want = "(L, tokens..., F) with L, F" if layered else "(tokens..., F) with F"
        raise UserError(f"Pass a as {want} matching w_out {w_shape}; got a with shape {a_shape}.")


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


def prepare_layer(a_NxF: Array, w_out_FxD: Array, mask_N: Array, axes: Axes = Axes(),
                  inv_norm_N: Array | None = None) -> Layer:
    """A layer with its dense-output norms (one dense product, psum'd over the neuron
    axis), or with `inv_norm_N` known from an earlier pass."""
    w_out_FxD = w_out_FxD.astype(jnp.float32)
    if inv_norm_N is None:
        full_NxD = psum(jnp.matmul(a_NxF.astype(jnp.float32), w_out_FxD, precision=PRECISION), axes.neurons)
        norm_N = jnp.linalg.norm(full_NxD, axis=-1)
        valid_N = mask_N & (norm_N > 0)
        inv_norm_N = jnp.where(valid_N, 1.0 / jnp.where(valid_N, norm_N, 1.0), 0.0)
    return Layer(a_NxF, w_out_FxD, out_norms(w_out_FxD), inv_norm_N, mask_N)


def truncated(layer: Layer, threshold: Array, axes: Axes = Axes()) -> tuple[Array, Array, Array]:
    """One truncated-product evaluation at `threshold` on this device's tokens.

    The truncated sum is computed as (a · 1[‖n‖ < t]) @ w_out: an (N, F) x (F, d) product
    (psum'd over the neuron axis), never an (N, F, d) tensor.

    Returns (Σ over this device's counted tokens of ‖Σ_{‖n_i‖<t} n_i‖/‖FFN(x)‖, the
    number of its dropped real token×neuron pairs as (2,) words, the truncated sums
    trunc_NxD); the first two are this device's parts, to psum over the token axis (and,
    for the count, the neuron axis).
    """
    drop_NxF = ~threshold_keep(layer_magnitudes(layer), threshold)
    a_NxF = layer.a_NxF.astype(jnp.float32)
    trunc_NxD = psum(jnp.matmul(jnp.where(drop_NxF, a_NxF, 0.0), layer.w_out_FxD, precision=PRECISION),
                     axes.neurons)
    ratio_sum = jnp.sum(jnp.linalg.norm(trunc_NxD, axis=-1) * layer.inv_norm_N)
    return ratio_sum, count_words(drop_NxF), trunc_NxD


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
    For a threshold t the inactive set is D_t = {i : ‖n_i‖ < t} (not kept by
    `nn.sparsify.threshold_keep`) and one token's CETT is
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
        leave it None — XLA makes the reductions global. (The threshold search splits F
        too, with explicit collectives: `threshold_pass.py`.)

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
        return truncated(layer, t)[0], jnp.sum(layer.inv_norm_N > 0, dtype=jnp.int32)

    sum_L, n_L = psum(jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD, t_L), axis_name)
    cett_L = safe_div(sum_L, n_L.astype(jnp.float32))
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
    few (N, F) masked copies whatever the number of thresholds. Dropped pairs are
    counted exactly (`count_words`).

    Args:
      a, w_out, token_mask, axis_name: as in `cett`.
      thresholds: (T,) magnitude thresholds, or (L, T) per layer.
    Returns:
      CettCurve(realised_cett, sparsity), each (T,) or (L, T); sparsity = fraction of real
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
        sums_T, dropped_Tx2 = lax.map(lambda t: truncated(layer, t)[:2], t_T, batch_size=_CURVE_BATCH)
        return sums_T, dropped_Tx2, jnp.sum(layer.inv_norm_N > 0, dtype=jnp.int32)

    sum_LxT, dropped_LxTx2, n_L = psum(jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD, t_LxT), axis_name)
    dropped_LxT = words_float(normalise_words(dropped_LxTx2))
    pairs = psum(jnp.sum(mask_N, dtype=jnp.int32), axis_name).astype(jnp.float32) * F
    curve = CettCurve(safe_div(sum_LxT, n_L[:, None].astype(jnp.float32)), safe_div(dropped_LxT, pairs))
    return curve if layered else CettCurve(curve.realised_cett[0], curve.sparsity[0])

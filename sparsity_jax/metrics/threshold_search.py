"""Exact per-layer magnitude threshold for a target CETT (ReLU² §3 / App. C).

`find_threshold(a, w_out, c)` returns per layer the largest threshold t with CETT(t) ≤ c
(thresholding is ‖n_i‖ < t, see `cett.py`), by a jitted bracketing search on truncated
products with an exact finish; `find_threshold` states the contract and the algorithm.
`prepare_search` / `find_prepared` reuse the set-up (`threshold_prep.py`) across targets.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import Layer, as_layers, mean_or_zero, run_auto, truncated
from sparsity_jax.metrics.threshold_prep import (
    PreparedSearch,
    _Context,
    _prepare,
    _proxy_cett,
    _proxy_inverse,
    _rank_of,
    _value_at,
)

Array = jax.Array

_OVERSHOOT = 0.15  # fraction of the last step to overshoot past the estimated root


class ThresholdResult(NamedTuple):
    """Result of `find_threshold`; every field has the output shape (see there)."""

    threshold: Array  # float32: drop neurons with ‖n_i‖ < threshold
    cett: Array  # float32: realised CETT at threshold
    sparsity: Array  # float32: fraction of real token×neuron pairs with ‖n_i‖ < threshold
    evaluations: Array  # int32: truncated (N, F) x (F, d) products used by the search


class _State(NamedTuple):
    t_lo: Array  # CETT(t_lo) <= target
    k_lo: Array  # int32: positive pairs dropped at t_lo
    c_lo: Array
    y_lo: Array  # CETT − target at t_lo, Illinois-scaled
    trunc_lo_NxD: Array  # truncated sums at t_lo
    t_hi: Array  # CETT(t_hi) > target
    k_hi: Array
    y_hi: Array
    side: Array  # -1: last step moved t_lo, +1: moved t_hi, 0: none yet
    t_last: Array  # the last evaluated point, and the one before it
    k_last: Array
    c_last: Array
    k_prev: Array
    c_prev: Array
    width_1ago: Array  # k_hi − k_lo one and two steps ago
    width_2ago: Array
    evals: Array


def _f32_bits(t: Array) -> Array:
    return lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.int32)


def _bits_f32(u: Array) -> Array:
    return lax.bitcast_convert_type(u.astype(jnp.int32), jnp.float32)


def _bit_range(ctx: _Context, s: _State) -> tuple[Array, Array]:
    """Float32 bit patterns [u_a, u_b) that hold every positive magnitude in [t_lo, t_hi)."""
    u_a = jnp.maximum(_f32_bits(s.t_lo), _f32_bits(ctx.pos_min))
    u_b = jnp.minimum(_f32_bits(s.t_hi), _f32_bits(ctx.pos_max) + 1)
    return u_a, u_b


def _propose(ctx: _Context, s: _State, target: Array, window: int) -> Array:
    """Next threshold to evaluate, strictly inside (t_lo, t_hi)."""
    q_S = ctx.quantiles_S
    # Step 1: where the proxy reaches the target.
    t_first = _proxy_inverse(ctx, target)
    # Step 2: the proxy shifted by the residual seen at step 1, overshot a little.
    proxy_last = _proxy_cett(ctx, s.t_last)
    t_star = _proxy_inverse(ctx, target - (s.c_last - proxy_last))
    z_star, z_last = _rank_of(q_S, t_star), _rank_of(q_S, s.t_last)
    t_second = _value_at(q_S, z_star + _OVERSHOOT * (z_star - z_last))
    # Later: secant on the dropped count K through the last two points when it stays
    # inside the bracket, else Illinois regula falsi on the bracket ends; then overshoot
    # towards the far end so that the next bracket is closed from both sides.
    k_lo, k_hi, k_last, k_prev = (x.astype(jnp.float32) for x in (s.k_lo, s.k_hi, s.k_last, s.k_prev))
    k_falsi = k_lo + (-s.y_lo) * (k_hi - k_lo) / (s.y_hi - s.y_lo)
    dc = s.c_last - s.c_prev
    k_secant = k_last + (target - s.c_last) * (k_last - k_prev) / jnp.where(dc != 0, dc, 1.0)
    k_root = jnp.where((dc != 0) & (k_secant > k_lo) & (k_secant < k_hi), k_secant, k_falsi)
    near = jnp.minimum(k_root - k_lo, k_hi - k_root)
    towards_hi = k_hi - k_root > k_root - k_lo
    k_new = k_root + jnp.where(towards_hi, 1.0, -1.0) * (_OVERSHOOT * near + window / 16)
    # Safeguard: the bracket count must halve every two steps, else bisect K.
    width = s.k_hi - s.k_lo
    k_new = jnp.where((s.evals >= 4) & (width > s.width_2ago // 2), 0.5 * (k_lo + k_hi), k_new)
    # K -> t through the quantile table calibrated at the bracket ends (linear in t
    # once the bracket is narrower than two table entries).
    frac = jnp.clip((k_new - k_lo) / jnp.maximum(k_hi - k_lo, 1.0), 0.0, 1.0)
    z_lo, z_hi = _rank_of(q_S, s.t_lo), _rank_of(q_S, s.t_hi)
    t_later = jnp.where(
        z_hi - z_lo >= 2.0,
        _value_at(q_S, z_lo + frac * (z_hi - z_lo)),
        s.t_lo + frac * (s.t_hi - s.t_lo),
    )
    t = jnp.select([s.evals == 0, s.evals == 1], [t_first, t_second], t_later)
    # Guard: outside the bracket, or the last step split nothing: bisect the bit patterns.
    u_a, u_b = _bit_range(ctx, s)
    t_mid = _bits_f32(u_a + jnp.maximum(1, (u_b - u_a) // 2))
    stalled = (s.evals >= 1) & (width == s.width_1ago)
    return jnp.where((t > s.t_lo) & (t < s.t_hi) & ~stalled, t, t_mid)


def _step(layer: Layer, ctx: _Context, target: Array, window: int, s: _State) -> _State:
    t = _propose(ctx, s, target, window)
    ratio_sum, dropped, trunc_NxD = truncated(layer, t)
    c = mean_or_zero(ratio_sum, layer.n_valid)
    k = dropped - ctx.n_zero  # t > 0 drops every zero magnitude
    y = c - target
    below = y <= 0
    lo = lambda new, old: jnp.where(below, new, old)  # noqa: E731
    hi = lambda new, old: jnp.where(below, old, new)  # noqa: E731
    # Illinois: an end kept twice in a row has its residual halved.
    y_lo = jnp.where(~below & (s.side == 1), 0.5 * s.y_lo, s.y_lo)
    y_hi = jnp.where(below & (s.side == -1), 0.5 * s.y_hi, s.y_hi)
    return _State(
        t_lo=lo(t, s.t_lo), k_lo=lo(k, s.k_lo), c_lo=lo(c, s.c_lo), y_lo=lo(y, y_lo),
        trunc_lo_NxD=jnp.where(below, trunc_NxD, s.trunc_lo_NxD),
        t_hi=hi(t, s.t_hi), k_hi=hi(k, s.k_hi), y_hi=hi(y, y_hi),
        side=jnp.where(below, -1, 1).astype(jnp.int32),
        t_last=t, k_last=k, c_last=c, k_prev=s.k_last, c_prev=s.c_last,
        width_1ago=s.k_hi - s.k_lo, width_2ago=s.width_1ago,
        evals=s.evals + 1,
    )


def _first_true(flags_M: Array, size: int) -> Array:
    """Indices of the True entries of flags_M (at most `size` of them), padded with 0.

    XLA:CPU runs a top-k far faster than the cumsum behind jnp.nonzero; on GPU/TPU a
    large-k top-k is a full sort and the cumsum is the cheap one.
    """
    if jax.default_backend() == "cpu":
        return lax.top_k(flags_M.astype(jnp.float32), size)[1]  # f32: XLA:CPU fast path
    return jnp.nonzero(flags_M, size=size, fill_value=0)[0]


def _finish(layer: Layer, s: _State, target: Array, window: int) -> tuple[Array, Array]:
    """Exact answer among the ≤ window positive magnitudes in [t_lo, t_hi)."""
    N, F = layer.mag_NxF.shape
    in_NxF = (layer.mag_NxF >= s.t_lo) & (layer.mag_NxF < s.t_hi) & (layer.mag_NxF > 0)
    flat_W = _first_true(in_NxF.reshape(-1), window)
    ok_W = jnp.arange(window) < s.k_hi - s.k_lo
    mag_W = jnp.where(ok_W, layer.mag_NxF.reshape(-1)[flat_W], jnp.inf)
    by_mag = jnp.argsort(mag_W)  # candidates in ascending magnitude order
    flat_W, e_W = flat_W[by_mag], mag_W[by_mag]
    tok_W, neu_W = flat_W // F, flat_W % F
    # Group by token (stable: magnitude order within a token) and cumulate the
    # candidates' outputs onto the truncated sums at t_lo.
    key_W = jnp.where(ok_W, tok_W, N)
    order = jnp.argsort(key_W, stable=True)
    key_g, tok_g, neu_g, ok_g = key_W[order], tok_W[order], neu_W[order], ok_W[order]
    out_WxD = jnp.where(ok_g, layer.a_NxF[tok_g, neu_g], 0.0)[:, None] * layer.w_out_FxD[neu_g]
    # Segmented prefix sums as differences of one cumsum (a segmented associative_scan
    # compiles ~10x slower); rounding stays far below the truncated sums' size.
    first_g = jnp.searchsorted(key_g, key_g, side="left", method="sort")  # start of each token's run
    start_g = first_g == jnp.arange(window)
    cum_WxD = jnp.cumsum(out_WxD, axis=0)
    prefix_WxD = cum_WxD - jnp.where((first_g > 0)[:, None], cum_WxD[first_g - 1], 0.0)
    base_WxD = s.trunc_lo_NxD[tok_g]
    inv_norm_g = jnp.where(ok_g, layer.inv_norm_N[tok_g], 0.0)
    after_g = jnp.linalg.norm(base_WxD + prefix_WxD, axis=-1) * inv_norm_g
    before_g = jnp.where(start_g, jnp.linalg.norm(base_WxD, axis=-1) * inv_norm_g, jnp.roll(after_g, 1))
    delta_W = jnp.zeros((window,), jnp.float32).at[order].set(jnp.where(ok_g, after_g - before_g, 0.0))
    # CETT before dropping candidate j = CETT at threshold e_W[j].
    c_after_W = s.c_lo + jnp.cumsum(delta_W) / jnp.maximum(layer.n_valid, 1.0)
    c_before_W = jnp.concatenate([s.c_lo[None], c_after_W[:-1]])
    j_W = jnp.arange(window)
    first_of_tie = jnp.concatenate([jnp.ones((1,), bool), e_W[1:] > e_W[:-1]])
    feasible = ok_W & first_of_tie & (c_before_W <= target)
    j = jnp.max(jnp.where(feasible, j_W, 0))
    return e_W[j], c_before_W[j]


def _search_one(layer: Layer, ctx: _Context, target: Array, window: int, max_evaluations: int):
    zero = jnp.float32(0.0)
    n_pos = ctx.n_pos
    s0 = _State(
        t_lo=zero, k_lo=jnp.int32(0), c_lo=zero, y_lo=-target,
        trunc_lo_NxD=jnp.zeros((layer.a_NxF.shape[0], layer.w_out_FxD.shape[1]), jnp.float32),
        t_hi=ctx.top, k_hi=n_pos, y_hi=ctx.c_top - target, side=jnp.int32(0),
        t_last=zero, k_last=jnp.int32(0), c_last=zero, k_prev=jnp.int32(0), c_prev=zero,
        width_1ago=n_pos, width_2ago=n_pos, evals=jnp.int32(0),
    )
    drop_all = ctx.c_top <= target

    def cond(s):
        u_a, u_b = _bit_range(ctx, s)
        return (~drop_all) & (s.evals < max_evaluations) & (s.k_hi - s.k_lo > window) & (u_b - u_a >= 2)

    s = lax.while_loop(cond, functools.partial(_step, layer, ctx, target, window), s0)
    t_exact, c_exact = _finish(layer, s, target, window)
    # Not closed (cap hit, or > window magnitudes tied at one value): the smallest
    # magnitude >= t_lo, exact in the tie case.
    in_NxF = (layer.mag_NxF >= s.t_lo) & (layer.mag_NxF > 0)
    t_safe = jnp.min(jnp.where(in_NxF, layer.mag_NxF, jnp.inf))
    closed = s.k_hi - s.k_lo <= window
    threshold = jnp.where(drop_all, ctx.top, jnp.where(closed, t_exact, t_safe))
    cett_value = jnp.where(drop_all, ctx.c_top, jnp.where(closed, c_exact, s.c_lo))
    n_pairs = layer.n_real * layer.mag_NxF.shape[1]
    sparsity = mean_or_zero(jnp.sum(layer.mag_NxF < threshold, dtype=jnp.float32), n_pairs)
    valid = (target >= 0) & (target <= 1)
    nan_if_invalid = lambda x: jnp.where(valid, x, jnp.nan)  # noqa: E731
    return ThresholdResult(nan_if_invalid(threshold), nan_if_invalid(cett_value), nan_if_invalid(sparsity), s.evals)


def _search_prepared(prep: PreparedSearch, target_LxK, window: int, max_evaluations: int) -> ThresholdResult:
    def one_layer(layer, ctx, target_K):
        return lax.map(lambda c: _search_one(layer, ctx, c, window, max_evaluations), target_K)

    return jax.vmap(one_layer)(prep.layer, prep.ctx, target_LxK)


@functools.partial(jax.jit, static_argnames=("window", "max_evaluations"))
def _find_jit(a_LxNxF, w_out_LxFxD, mask_N, target_LxK, window: int, max_evaluations: int) -> ThresholdResult:
    return _search_prepared(_prepare(a_LxNxF, w_out_LxFxD, mask_N), target_LxK, window, max_evaluations)


_prepare_jit = jax.jit(_prepare)
_search_prepared_jit = jax.jit(_search_prepared, static_argnames=("window", "max_evaluations"))


def _default_window(n_tokens: int, n_neurons: int) -> int:
    return int(np.clip(2 ** round(np.log2(max(n_tokens * n_neurons, 1) / 2048)), 4096, 32768))


def prepare_search(a: Array, w_out: Array, token_mask: Array | None = None) -> PreparedSearch:
    """The set-up of `find_threshold` on `a` (L, tokens..., F) and `w_out` (L, F, d), once.

    For arrays on one device (no explicit-mesh sharding); `find_threshold` handles
    sharded inputs. Use with `find_prepared`.
    """
    a_LxNxF, w_out_LxFxD, mask_N, layered = as_layers(a, w_out, token_mask)
    if not layered:
        raise UserError(f"Pass w_out with a layer axis (L, F, d) to prepare_search; got {jnp.shape(w_out)}.")
    return _prepare_jit(a_LxNxF, w_out_LxFxD, mask_N)


def find_prepared(prep: PreparedSearch, target, *, window: int | None = None,
                  max_evaluations: int = 64) -> ThresholdResult:
    """`find_threshold` on prepared layers: target a scalar → fields (L,); (K,) or (1, K)
    shared targets, or (L, K) → fields (L, K). The results of `find_threshold` up to
    float32 rounding (other fusion of the sums). Unlike `find_threshold`, where a 1-D
    target on layered input is one target per layer, a (K,) target here is K targets
    shared by all layers; pass (L, 1) for per-layer targets."""
    _check_target(target)
    L, N, F = prep.layer.a_NxF.shape
    target = jnp.asarray(target, jnp.float32)
    if target.ndim > 2 or (target.ndim == 2 and target.shape[0] not in (1, L)):
        raise UserError(f"Pass target as a scalar, (K,) or (L, K) with L = {L}; got shape {target.shape}.")
    target_LxK = jnp.broadcast_to(target.reshape((-1, target.shape[-1]) if target.ndim else (1, 1)),
                                  (L, target.shape[-1] if target.ndim else 1))
    res = _search_prepared_jit(prep, target_LxK, window or _default_window(N, F), max_evaluations)
    return jax.tree.map(lambda x: x[:, 0], res) if target.ndim == 0 else res


def _check_target(target) -> None:
    """UserError for a concrete target outside [0, 1] or NaN; traced targets give NaN results."""
    try:
        t = np.asarray(target, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.all((t >= 0) & (t <= 1)):
        raise UserError(f"Pass a target CETT between 0 and 1; got {target!r}.")


def find_threshold(
    a: Array,
    w_out: Array,
    target: Array | float,
    token_mask: Array | None = None,
    *,
    window: int | None = None,
    max_evaluations: int = 64,
) -> ThresholdResult:
    """The largest magnitude threshold with CETT ≤ target, per layer.

    t is a magnitude value with CETT(t) ≤ c and CETT(next larger distinct magnitude) > c,
    exact up to float32 rounding of the sums. c = 0 drops only exact zeros (they add
    nothing); c = 1 drops everything (t just above the largest magnitude), and so does
    any c for a layer whose FFN output is zero on every real token. CETT is taken as
    monotone in t (true in practice, not guaranteed); otherwise the result is a local
    boundary CETT(t) ≤ c < CETT(next). Per layer N·F < 2³¹.

    Algorithm — a jitted `lax.while_loop` per layer and target, no host round trip;
    layers are vmapped, targets share each layer's set-up through lax.map:
      1. Set-up per layer (`threshold_prep.py`): the dense product (for ‖FFN(x)‖) and a
         proxy — P ≈ 2¹⁶/F real tokens whose CETT curves are computed exactly at 64
         knots (P·F·d multiply-adds, vs N·F·d per evaluation), tabulated at 2048
         thresholds; their sorted magnitudes double as a quantile table. No global sort
         of the N·F magnitudes: it costs more than the products it saves and would
         gather a sharded array; other per-step costs are O(N·F) elementwise passes.
      2. Bracket [t_lo, t_hi], CETT(t_lo) ≤ c < CETT(t_hi), from 0 and "drop all"
         (CETT 1, known). Each step evaluates the truncated product
         (a · 1[‖n‖ < t]) @ w_out once. Step 1 asks the proxy for c; step 2 shifts the
         proxy by the residual seen; later steps: secant on the dropped count K (Illinois
         regula falsi on the bracket ends when it leaves the bracket), mapped to t
         through the quantile table calibrated at the bracket ends. Proposals overshoot
         the estimated root a little so the bracket closes from both sides. Safeguards:
         bisect K if the bracket count did not halve in two steps; bisect the float32
         bit patterns if a proposal is outside the bracket or the last step split
         nothing (≤ 31 such steps always finish).
      3. With ≤ `window` positive magnitudes left in the bracket, finish exactly with no
         further product: extract those pairs, gather their outputs (window × d), add
         them per token in magnitude order to the truncated sums carried from t_lo, and
         read CETT off after each candidate. Exact ties beyond `window` are handled
         exactly too.
    `evaluations` counts the truncated products (the dense product and the finish come
    on top); exactness costs no further product, and ≤ `window` positive magnitudes need
    0. If `max_evaluations` is hit (adversarial data only) the result is the smallest
    magnitude ≥ t_lo: feasible, maybe not maximal.

    Sharding: `a` sharded over tokens ('data') and neurons ('tensor'), `w_out` over
    neurons, jitted or not, auto or explicit mesh: every step is a product or reduction
    that XLA partitions (the finish's extraction gathers a bool mask). Results equal the
    unsharded ones up to float32 reduction order.

    Args:
      a: activation scores (tokens..., F), or (L, tokens..., F) with a layer axis.
      w_out: output kernel (F, d), or (L, F, d).
      target: CETT upper bound(s) in [0, 1]. Without a layer axis: a scalar or (K,)
        targets. With one: a scalar, (L,) one per layer, or (L, K) / (1, K) for K
        targets per layer.
      token_mask: bool (tokens...), True for real tokens; None = all real.
      window: magnitudes the exact finish handles at once (window × d floats); None =
        N·F/2048 rounded to a power of two, clipped to [4096, 32768].
      max_evaluations: cap on truncated products per layer and target.
    Returns:
      ThresholdResult with fields of shape () / (K,) / (L,) / (L, K) following target.
      A traced target outside [0, 1] gives NaN fields.
    Raises:
      UserError: bad shapes, or a concrete target outside [0, 1].
    """
    _check_target(target)
    layered = jnp.ndim(w_out) == 3
    L = jnp.shape(w_out)[0] if layered else 1
    target = jnp.asarray(target, jnp.float32)
    if layered and target.ndim == 1 and target.shape[0] != L:
        raise UserError(
            f"Pass one target per layer as (L,) = ({L},), or K shared targets as (1, K); got {target.shape}."
        )
    if target.ndim > (2 if layered else 1) or (target.ndim == 2 and target.shape[0] not in (1, L)):
        raise UserError(f"Pass target as a scalar, (L,) or (L, K) with L = {L}; got shape {target.shape}.")
    has_k = target.ndim == (2 if layered else 1)
    k = target.shape[-1] if has_k else 1
    target_LxK = jnp.broadcast_to(target.reshape((-1, k)), (L, k))

    def run(a, w_out, token_mask, target_LxK):
        a_LxNxF, w_out_LxFxD, mask_N, _ = as_layers(a, w_out, token_mask)
        window_ = window or _default_window(a_LxNxF.shape[1], a_LxNxF.shape[2])
        return tuple(_find_jit(a_LxNxF, w_out_LxFxD, mask_N, target_LxK, window_, max_evaluations))

    result = ThresholdResult(*run_auto(run, a, w_out, token_mask, target_LxK))
    squeeze = (lambda x: x) if has_k else (lambda x: x[:, 0])
    return jax.tree.map(lambda x: squeeze(x) if layered else squeeze(x)[0], result)

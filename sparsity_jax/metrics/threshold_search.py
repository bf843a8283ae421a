"""Exact per-layer magnitude threshold for a target CETT (ReLU² §3 / App. C).

`find_threshold(a, w_out, c)` returns per layer the largest threshold t with CETT(t) ≤ c
(thresholding is ‖n_i‖ < t, see `cett.py`), by a jitted bracketing search on truncated
products with an exact finish; `find_threshold` states the contract and the algorithm.
`prepare_search` / `find_prepared` reuse the set-up (`threshold_setup.py`) across targets;
the passes over the (possibly sharded, possibly recomputed) scores are `threshold_pass.py`.

The search over five files, in the order it runs (L layers, nb blocks of tokens, M tokens
per block, F neurons, d model width, K targets, P proxy tokens, W ≤ window candidates):
  metrics/cett.py             the definition: CETT(t) of one layer from scores a (M, F) and
                              W_out (F, d) — the truncated product Σ_{‖n_i‖<t} a_i·W_out,i
                              over ‖FFN(x)‖ — and exact pair counts in two int32 words.
  search/thresholds.py        the model's side: `dense_pass` runs the dense model once over
                              the validation batches, caching the scores (nb, L, B, T, F) on
                              the mesh (or recomputing them per pass), and drives step 1.
  metrics/threshold_setup.py  1. set-up, per block (`setup_search_block`, which runs
                              `threshold_pass.setup_block`): dense-output norms (L, M), pair
                              counts (`threshold_pass.Totals`), the magnitude range, the rows
                              of P proxy tokens; then `finish_setup` → `PreparedSearch`, whose
                              `SearchContext` holds, per layer, 2. the proxies
                              (`build_context`): a proxy CETT curve from the P rows and a
                              quantile table, which propose thresholds.
  metrics/threshold_search.py 3. the bracket (`_search`, every layer and target at once):
                              per loop step one proposal t (L, K) (the proxy curve first, then
                              secant / Illinois on the dropped-pair count), one pass over the
                              blocks (`threshold_pass.eval_block`: CETT numerator and dropped
                              pairs per (layer, target)); ≤ 8 passes on trained models.
  metrics/threshold_pass.py   the passes of steps 1, 3 and 4, and 4. the exact finish
                              (`finish_block`): once ≤ W positive pairs lie in [t_lo, t_hi),
                              their magnitudes and CETT increments are gathered (W per block,
                              merged), and `_pick` takes the largest t with CETT(t) ≤ target
                              exactly. Every pass is a shard_map kernel with explicit
                              collectives (tokens × neurons on the mesh).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import check_shapes, normalise_words, run_auto, sub_words, words_float, words_min
from sparsity_jax.metrics.reduce import check_per_token, safe_div
from sparsity_jax.metrics.threshold_pass import (
    Candidates, ScorePlacement, Scores, auto_view, eval_block, finish_block, merge_candidates, over_blocks,
    placement_of,
)
from sparsity_jax.metrics.threshold_setup import (
    PreparedSearch, SearchContext, proxy_cett, proxy_inverse, rank_of, setup, value_at,
)

Array = jax.Array

_OVERSHOOT = 0.15  # fraction of the last step to overshoot past the estimated root


class ThresholdResult(NamedTuple):
    """Result of `find_threshold`; every field has the output shape (see there)."""

    threshold: Array  # float32: drop neurons with ‖n_i‖ < threshold
    realised_cett: Array  # float32: realised CETT at threshold
    sparsity: Array  # float32: fraction of real token×neuron pairs with ‖n_i‖ < threshold
    evaluations: Array  # int32: truncated (N, F) x (F, d) products used by the search


class _State(NamedTuple):
    """Bracket state of one (layer, target); counts of positive pairs as (2,) int32 words."""

    t_lo: Array  # CETT(t_lo) <= target
    k_lo: Array  # positive pairs dropped at t_lo
    c_lo: Array
    y_lo: Array  # CETT − target at t_lo, Illinois-scaled
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


def _bit_range(ctx: SearchContext, s: _State) -> tuple[Array, Array]:
    """Float32 bit patterns [u_a, u_b) that hold every positive magnitude in [t_lo, t_hi)."""
    u_a = jnp.maximum(_f32_bits(s.t_lo), _f32_bits(ctx.pos_min))
    u_b = jnp.minimum(_f32_bits(s.t_hi), _f32_bits(ctx.pos_max) + 1)
    return u_a, u_b


def _init(ctx: SearchContext, target: Array) -> _State:
    zero, none = jnp.float32(0.0), jnp.zeros((2,), jnp.int32)
    return _State(t_lo=zero, k_lo=none, c_lo=zero, y_lo=-target, t_hi=ctx.top, k_hi=ctx.n_pos,
                  y_hi=ctx.c_top - target, side=jnp.int32(0), t_last=zero, k_last=none, c_last=zero, k_prev=none,
                  c_prev=zero, width_1ago=ctx.n_pos, width_2ago=ctx.n_pos, evals=jnp.int32(0))


def _active(ctx: SearchContext, s: _State, target: Array, window: int, max_evaluations: int) -> Array:
    u_a, u_b = _bit_range(ctx, s)
    wide = words_min(sub_words(s.k_hi, s.k_lo), window + 1) > window
    return (ctx.c_top > target) & (s.evals < max_evaluations) & wide & (u_b - u_a >= 2)


def _propose(ctx: SearchContext, s: _State, target: Array, window: int) -> Array:
    """Next threshold to evaluate, strictly inside (t_lo, t_hi)."""
    q_S = ctx.quantiles_S
    # Step 1: where the proxy reaches the target.
    t_first = proxy_inverse(ctx, target)
    # Step 2: the proxy shifted by the residual seen at step 1, overshot a little.
    t_star = proxy_inverse(ctx, target - (s.c_last - proxy_cett(ctx, s.t_last)))
    z_star, z_last = rank_of(q_S, t_star), rank_of(q_S, s.t_last)
    t_second = value_at(q_S, z_star + _OVERSHOOT * (z_star - z_last))
    # Later: secant on the dropped count K through the last two points when it stays
    # inside the bracket, else Illinois regula falsi on the bracket ends; then overshoot
    # towards the far end so that the next bracket is closed from both sides. Counts are
    # taken relative to k_lo (exact words, then float32).
    width = sub_words(s.k_hi, s.k_lo)
    d_hi, d_last, d_prev = (words_float(sub_words(k, s.k_lo)) for k in (s.k_hi, s.k_last, s.k_prev))
    k_falsi = (-s.y_lo) * d_hi / (s.y_hi - s.y_lo)
    dc = s.c_last - s.c_prev
    k_secant = d_last + (target - s.c_last) * (d_last - d_prev) / jnp.where(dc != 0, dc, 1.0)
    k_root = jnp.where((dc != 0) & (k_secant > 0) & (k_secant < d_hi), k_secant, k_falsi)
    near = jnp.minimum(k_root, d_hi - k_root)
    towards_hi = d_hi - k_root > k_root
    k_new = k_root + jnp.where(towards_hi, 1.0, -1.0) * (_OVERSHOOT * near + window / 16)
    # Safeguard: the bracket count must halve every two steps, else bisect K.
    k_new = jnp.where((s.evals >= 4) & (d_hi > jnp.floor(words_float(s.width_2ago) / 2)), 0.5 * d_hi, k_new)
    # K -> t through the quantile table calibrated at the bracket ends (linear in t
    # once the bracket is narrower than two table entries).
    frac = jnp.clip(k_new / jnp.maximum(d_hi, 1.0), 0.0, 1.0)
    z_lo, z_hi = rank_of(q_S, s.t_lo), rank_of(q_S, s.t_hi)
    t_later = jnp.where(z_hi - z_lo >= 2.0, value_at(q_S, z_lo + frac * (z_hi - z_lo)),
                        s.t_lo + frac * (s.t_hi - s.t_lo))
    t = jnp.select([s.evals == 0, s.evals == 1], [t_first, t_second], t_later)
    # Guard: outside the bracket, or the last step split nothing: bisect the bit patterns.
    u_a, u_b = _bit_range(ctx, s)
    t_mid = _bits_f32(u_a + jnp.maximum(1, (u_b - u_a) // 2))
    stalled = (s.evals >= 1) & jnp.all(width == s.width_1ago)
    return jnp.where((t > s.t_lo) & (t < s.t_hi) & ~stalled, t, t_mid)


def _step(ctx: SearchContext, s: _State, target: Array, t: Array, ratio_sum: Array, dropped: Array,
          active: Array) -> _State:
    c = safe_div(ratio_sum, ctx.n_valid)
    k = sub_words(dropped, ctx.n_zero)  # t > 0 drops every zero magnitude
    y = c - target
    below = y <= 0
    lo = lambda new, old: jnp.where(below, new, old)  # noqa: E731
    hi = lambda new, old: jnp.where(below, old, new)  # noqa: E731
    # Illinois: an end kept twice in a row has its residual halved.
    y_lo = jnp.where(~below & (s.side == 1), 0.5 * s.y_lo, s.y_lo)
    y_hi = jnp.where(below & (s.side == -1), 0.5 * s.y_hi, s.y_hi)
    new = _State(
        t_lo=lo(t, s.t_lo), k_lo=lo(k, s.k_lo), c_lo=lo(c, s.c_lo), y_lo=lo(y, y_lo),
        t_hi=hi(t, s.t_hi), k_hi=hi(k, s.k_hi), y_hi=hi(y, y_hi),
        side=jnp.where(below, -1, 1).astype(jnp.int32),
        t_last=t, k_last=k, c_last=c, k_prev=s.k_last, c_prev=s.c_last,
        width_1ago=sub_words(s.k_hi, s.k_lo), width_2ago=s.width_1ago, evals=s.evals + 1,
    )
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, s)


def _pick(ctx: SearchContext, s: _State, target: Array, cand: Candidates, window: int) -> ThresholdResult:
    """The answer from the merged candidates (ascending): CETT before dropping candidate j
    is the CETT at threshold e_W[j]; the largest feasible first-of-a-tie wins."""
    c_after_W = s.c_lo + jnp.cumsum(cand.delta_W) / jnp.maximum(ctx.n_valid, 1.0)
    c_before_W = jnp.concatenate([s.c_lo[None], c_after_W[:-1]])
    e_W = cand.e_W
    first_of_tie = jnp.concatenate([jnp.ones((1,), bool), e_W[1:] > e_W[:-1]])
    j = jnp.max(jnp.where(cand.ok_W & first_of_tie & (c_before_W <= target), jnp.arange(window), 0))
    closed = words_min(sub_words(s.k_hi, s.k_lo), window + 1) <= window
    drop_all = ctx.c_top <= target
    # Not closed (cap hit, or > window magnitudes tied at one value): the smallest
    # magnitude ≥ t_lo, exact in the tie case; it drops what t_lo drops.
    threshold = jnp.where(drop_all, ctx.top, jnp.where(closed, e_W[j], cand.t_safe))
    cett_value = jnp.where(drop_all, ctx.c_top, jnp.where(closed, c_before_W[j], s.c_lo))
    below = jnp.where(drop_all, words_float(normalise_words(ctx.n_pos + ctx.n_zero)),
                      words_float(normalise_words(ctx.n_zero + s.k_lo)) + jnp.where(closed, j, 0))
    valid = (target >= 0) & (target <= 1)
    nan_if_invalid = lambda x: jnp.where(valid, x, jnp.nan)  # noqa: E731
    return ThresholdResult(nan_if_invalid(threshold), nan_if_invalid(cett_value),
                           nan_if_invalid(safe_div(below, ctx.pairs)), s.evals)


def _per_layer(fn):
    """fn(ctx, state/target/..., ...) over (L, K): ctx per layer, the rest per (layer, target)."""
    inner = jax.vmap(fn, in_axes=(None,) + (0,) * (fn.__code__.co_argcount - 1))
    return jax.vmap(inner)


@functools.partial(jax.jit, static_argnames=("window", "max_evaluations"))
def _search(prep: PreparedSearch, target_LxK: Array, window: int, max_evaluations: int) -> ThresholdResult:
    """Every layer and target at once: each loop step is one pass over the blocks."""
    scores, ctx = prep.scores, prep.ctx
    block_args = lambda i: (scores.placement, scores.block(i), prep.w_out_LxFxD, prep.real[i], prep.inv_norm[i])  # noqa
    active = lambda s: _per_layer(lambda c, s, t: _active(c, s, t, window, max_evaluations))(ctx, s, target_LxK)  # noqa

    def body(s):
        t_LxK = _per_layer(lambda c, s, t: _propose(c, s, t, window))(ctx, s, target_LxK)
        on_LxK = active(s)
        ratio_nb, dropped_nb = over_blocks(scores, lambda i: eval_block(*block_args(i), t_LxK, on_LxK))
        return _per_layer(_step)(ctx, s, target_LxK, t_LxK, jnp.sum(ratio_nb, axis=0),
                                 normalise_words(jnp.sum(dropped_nb, axis=0)), on_LxK)

    s = lax.while_loop(lambda s: jnp.any(active(s)), body, _per_layer(_init)(ctx, target_LxK))
    closed = words_min(sub_words(s.k_hi, s.k_lo), window + 1) <= window
    cand = merge_candidates(over_blocks(scores, lambda i: finish_block(
        *block_args(i), s.t_lo, s.t_hi, closed & (ctx.c_top[:, None] > target_LxK), window)), window)
    return _per_layer(lambda c, s, t, x: _pick(c, s, t, x, window))(ctx, s, target_LxK, cand)


def _default_window(n_tokens: int, n_neurons: int) -> int:
    return int(np.clip(2 ** round(np.log2(max(n_tokens * n_neurons, 1) / 2048)), 4096, 32768))


def prepare_search(a: Array, w_out: Array, token_mask: Array | None = None) -> PreparedSearch:
    """The set-up of `find_threshold` on `a` (L, tokens..., F) and `w_out` (L, F, d), once;
    use with `find_prepared`. Sharded `a` (tokens over its first token axis, F over its
    last) is searched on its mesh with explicit collectives; see `find_threshold`."""
    check_shapes(jnp.shape(a), jnp.shape(w_out))
    if jnp.ndim(w_out) != 3:
        raise UserError(f"Pass w_out with a layer axis (L, F, d) to prepare_search; got {jnp.shape(w_out)}.")
    if token_mask is not None:
        check_per_token(token_mask, jnp.shape(a)[1:-1], f"a {jnp.shape(a)}")
    a, w_out, token_mask = (auto_view(x) for x in (a, w_out, token_mask))
    placement = placement_of(a)
    real = _real(token_mask, jnp.shape(a)[1:-1], placement)
    scores = Scores(a, None, placement, 1, stacked=False)
    return PreparedSearch(scores, w_out, real, *setup(scores, w_out, real))


def _real(token_mask: Array | None, token_shape: tuple, placement: ScorePlacement) -> Array:
    """(1, tokens...) bool real-token mask, on the placement's mesh."""
    make = lambda m: (jnp.ones(token_shape, bool) if m is None else m.astype(bool))[None]  # noqa: E731
    sharding = placement.sharding("layer_tokens", len(token_shape) + 1)
    return (jax.jit(make) if sharding is None else jax.jit(make, out_shardings=sharding))(token_mask)


def find_prepared(prep: PreparedSearch, target_cett, *, window: int | None = None, max_evaluations: int = 64,
                  check: bool = True) -> ThresholdResult:
    """`find_threshold` on prepared layers: target a scalar → fields (L,); (K,) or (1, K)
    shared targets, or (L, K) → fields (L, K). Unlike `find_threshold`, where a 1-D target
    on layered input is one target per layer, a (K,) target here is K targets shared by
    all layers; pass (L, 1) for per-layer targets. `check=False`: the caller has already
    checked the target at its boundary (`check_target_cett`); a target outside [0, 1]
    then gives NaN fields."""
    if check:
        check_target_cett(target_cett)
    L, F = prep.w_out_LxFxD.shape[:2]
    target = jnp.asarray(target_cett, jnp.float32)
    if target.ndim > 2 or (target.ndim == 2 and target.shape[0] not in (1, L)):
        raise UserError(f"Pass target_cett as a scalar, (K,) or (L, K) with L = {L}; got shape {target.shape}.")
    k = target.shape[-1] if target.ndim else 1
    target_LxK = jnp.broadcast_to(target.reshape((-1, k)), (L, k))
    n_tokens = int(np.prod(prep.real.shape))
    res = _search(prep, target_LxK, window or _default_window(n_tokens, F), max_evaluations)
    return jax.tree.map(lambda x: x[:, 0], res) if target.ndim == 0 else res


def check_target_cett(target_cett) -> None:
    """The one check of a target CETT: UserError for a concrete value (scalar or array)
    outside [0, 1] or NaN; traced targets pass (they give NaN results)."""
    try:
        t = np.asarray(target_cett, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.all((t >= 0) & (t <= 1)):
        raise UserError(f"Pass a target CETT between 0 and 1; got {target_cett!r}.")


def find_threshold(
    a: Array,
    w_out: Array,
    target_cett: Array | float,
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
    boundary CETT(t) ≤ c < CETT(next). Pair counts are exact int32 words (N·F up to 2⁴⁷).

    Algorithm — one jitted `lax.while_loop` for all layers and targets, no host round trip:
      1. Set-up pass (`threshold_pass.setup_block`, `threshold_setup.build_context`): the
         dense product per token (for ‖FFN(x)‖), pair counts and the magnitude range, and
         a proxy — P ≈ 2¹⁶/F real tokens whose CETT curves are computed exactly at 64
         knots (P·F·d multiply-adds, vs N·F·d per evaluation), tabulated at 2048
         thresholds; their sorted magnitudes double as a quantile table. No global sort
         of the N·F magnitudes: it costs more than the products it saves and would
         gather a sharded array; other per-step costs are O(N·F) elementwise passes.
      2. Bracket [t_lo, t_hi], CETT(t_lo) ≤ c < CETT(t_hi), from 0 and "drop all"
         (CETT 1, known). Each step evaluates the truncated product
         (a · 1[‖n‖ < t]) @ w_out once per layer and target still open. Step 1 asks the
         proxy for c; step 2 shifts the proxy by the residual seen; later steps: secant
         on the dropped count K (Illinois regula falsi on the bracket ends when it leaves
         the bracket), mapped to t through the quantile table calibrated at the bracket
         ends. Proposals overshoot the estimated root a little so the bracket closes from
         both sides. Safeguards: bisect K if the bracket count did not halve in two
         steps; bisect the float32 bit patterns if a proposal is outside the bracket or
         the last step split nothing (≤ 31 such steps always finish).
      3. With ≤ `window` positive magnitudes left in the bracket, finish exactly: extract
         those pairs, add their outputs per token in magnitude order onto the truncated
         sums at t_lo (recomputed for their tokens only: ≤ window rows), and read CETT
         off after each candidate. Exact ties beyond `window` are handled exactly too.
    `evaluations` counts the truncated products of step 2 (the set-up's dense product
    and the finish's ≤ window rows come on top). If `max_evaluations` is hit
    (adversarial data only) the result is the smallest magnitude ≥ t_lo: feasible,
    maybe not maximal.

    Sharding: a concrete `a` with a NamedSharding is searched on its mesh: tokens split
    over the axes of its first token axis, neurons over those of its F axis
    (`threshold_pass.placement_of`), every pass a `shard_map` kernel with psums over those
    axes; the scores never leave their devices. Results equal the one-device ones up to
    float32 reduction order. Traced inside the caller's jit, the one-device code runs
    and GSPMD partitions it (on an explicit mesh in auto mode, `cett.run_auto`).

    Args:
      a: activation scores (tokens..., F), or (L, tokens..., F) with a layer axis.
      w_out: output kernel (F, d), or (L, F, d).
      target_cett: CETT upper bound(s) in [0, 1]. Without a layer axis: a scalar or (K,)
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
    check_target_cett(target_cett)
    check_shapes(jnp.shape(a), jnp.shape(w_out))
    layered = jnp.ndim(w_out) == 3
    L = jnp.shape(w_out)[0] if layered else 1
    target = jnp.asarray(target_cett, jnp.float32)
    if layered and target.ndim == 1 and target.shape[0] != L:
        raise UserError(
            f"Pass one target per layer as (L,) = ({L},), or K shared targets as (1, K); got {target.shape}."
        )
    if target.ndim > (2 if layered else 1) or (target.ndim == 2 and target.shape[0] not in (1, L)):
        raise UserError(f"Pass target_cett as a scalar, (L,) or (L, K) with L = {L}; got shape {target.shape}.")
    has_k = target.ndim == (2 if layered else 1)
    k = target.shape[-1] if has_k else 1
    target_LxK = jnp.broadcast_to(target.reshape((-1, k)), (L, k))
    a, w_out, token_mask = (auto_view(x) for x in (a, w_out, token_mask))
    if not layered:
        a, w_out = a[None], jnp.asarray(w_out)[None]

    def run(a, w_out, token_mask, target_LxK):
        prep = prepare_search(a, w_out, token_mask)
        return tuple(find_prepared(prep, target_LxK, window=window, max_evaluations=max_evaluations, check=False))

    result = ThresholdResult(*run_auto(run, a, w_out, token_mask, target_LxK))  # explicit-axis tracers
    squeeze = (lambda x: x) if has_k else (lambda x: x[:, 0])
    return jax.tree.map(lambda x: squeeze(x) if layered else squeeze(x)[0], result)

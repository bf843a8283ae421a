"""Set-up of the exact CETT threshold search (ReLU² §3 / App. C; Sparsing Law App. C).

`threshold_search.py` runs the search; this module prepares, once per layer and for any
number of targets, what its proposals read (step 1 of the algorithm in `find_threshold`):
a `PreparedSearch` holding a proxy CETT curve, a quantile table and the bracket's ends
(`SearchContext`, from `build_context`), built from the `Totals` the set-up pass
(`threshold_pass.setup_block`) gathers over all devices: pair counts, the magnitude range
and the rows of a few proxy tokens (`proxy_tokens`). `find_prepared` then searches a
`PreparedSearch` for any number of targets. Two ways to build one:
  * from scores held as one array: `threshold_search.prepare_search(a, w_out, mask)`;
  * block by block, where the caller produces the scores itself, e.g. a model's dense
    pass over validation batches (`search.thresholds.dense_pass`), which caches the
    blocks or recomputes them at every pass (`Scores`):

        proxies = search_proxies(real, d_ff)        # once: real (nb, B, T...) bool
        # per block i, inside the caller's jit, on the block's mesh (`ScorePlacement`):
        inv_i, totals_i = setup_search_block(placement, a_i, w_out, real[i], proxies, i)
        prepared = finish_setup(scores, w_out, real, inv_norm, totals)  # stacked per block

Both ways run the same code (`setup` is the first way's jitted loop over the blocks).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsity_jax.metrics.cett import PRECISION, normalise_words
from sparsity_jax.metrics.reduce import safe_div
from sparsity_jax.metrics.threshold_pass import ScorePlacement, Scores, Totals, over_blocks, setup_block
from sparsity_jax.nn.sparsify import magnitudes, out_norms

Array = jax.Array

_SAMPLE_PAIRS = 1 << 16  # token×neuron pairs in the proxy sample
_SAMPLE_TOKENS = (16, 256)  # bounds on the number of proxy tokens
_PROXY_FLOATS = 1 << 22  # floats per lax.map step when summing the proxy outputs
_PROXY_KNOTS = 64  # points of each proxy token's CETT curve
_PROXY_GRID = 2048  # thresholds at which the proxy CETT is tabulated
_GOLDEN = 0.6180339887


class SearchContext(NamedTuple):
    """Per-layer, target-independent search data."""

    sample_PxF: Array  # proxy tokens' magnitudes, sorted per token
    ratio_PxG1: Array  # proxy tokens' CETT after dropping their smallest j·F/G neurons
    weight_P: Array  # 1 for proxy tokens with a non-zero FFN output
    grid_Q: Array  # thresholds (every S/Q-th proxy magnitude) where the proxy is tabulated
    proxy_Q: Array  # proxy CETT at grid_Q, made non-decreasing
    quantiles_S: Array  # all proxy magnitudes, sorted (the quantile table)
    top: Array  # threshold that drops everything
    c_top: Array  # CETT at top: 1, or 0 when no token counts
    n_valid: Array  # float32: counted tokens
    pairs: Array  # float32: real token×neuron pairs (n_real·F)
    n_pos: Array  # (2,) words: real pairs with a positive magnitude
    n_zero: Array  # (2,) words: real pairs with a zero magnitude
    pos_min: Array  # smallest positive real magnitude
    pos_max: Array  # largest real magnitude


def proxy_count(F: int) -> int:
    """P ≈ 2¹⁶/F proxy tokens, in [16, 256]."""
    return int(np.clip(-(-_SAMPLE_PAIRS // F), *_SAMPLE_TOKENS))


def proxy_tokens(real_BxN: Array, P: int) -> tuple[Array, Array]:
    """(block_P, position_P) int32 of P real tokens at golden-ratio ranks among the real
    tokens in (block, position) order: spread over the data, deterministic, no PRNG, and
    the same on any mesh. `real_BxN`: bool (blocks, tokens per block)."""
    nb, n = real_BxN.shape
    cum_X = jnp.cumsum(real_BxN.reshape(-1), dtype=jnp.int32)  # < 2³¹ tokens
    n_real = cum_X[-1]
    rank_P = jnp.floor((np.arange(P) * _GOLDEN + 0.5) % 1.0 * n_real).astype(jnp.int32)
    rank_P = jnp.clip(rank_P, 0, jnp.maximum(n_real - 1, 0))
    flat_P = jnp.clip(jnp.searchsorted(cum_X, rank_P + 1, side="left"), 0, nb * n - 1).astype(jnp.int32)
    return flat_P // n, flat_P % n


def _proxy_curves(rows_PxF: Array, w_out_FxD: Array, order_PxF: Array, inv_norm_P: Array, n_knots: int) -> Array:
    """Per proxy token, CETT after dropping its j·F/G smallest neurons, j = 0..G."""
    F, d = w_out_FxD.shape
    block = -(-F // n_knots)
    P = rows_PxF.shape[0]

    def one_token(args):
        a_F, order_F, inv_norm = args
        out_FxD = a_F[order_F][:, None] * w_out_FxD[order_F]
        out_FxD = jnp.pad(out_FxD, ((0, n_knots * block - F), (0, 0)))
        sums_GxD = jnp.cumsum(out_FxD.reshape(n_knots, block, d).sum(axis=1), axis=0)
        return jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.linalg.norm(sums_GxD, axis=-1) * inv_norm])

    batch = max(1, min(P, _PROXY_FLOATS // (F * d)))
    return lax.map(one_token, (rows_PxF, order_PxF, inv_norm_P), batch_size=batch)


def build_context(totals: Totals, w_out_LxFxD: Array) -> SearchContext:
    """Every layer's target-independent search data (leading L axis), from the set-up
    pass's totals and the full output kernels:
      * a proxy — the P tokens of `proxy_tokens` — whose CETT curves are computed exactly
        at 64 knots (sort their F magnitudes, cumulate their outputs), tabulated at 2048
        thresholds through counts below each threshold, and inverted linearly between
        grid points;
      * the proxy tokens' sorted magnitudes as a quantile table (`_rank_of` /
        `_value_at`), through which the search maps a dropped count K to a threshold;
      * the bracket's ends and counts: the "drop all" threshold and its CETT, the
        numbers of positive and zero real magnitudes, the smallest and largest of them.
    """
    F = w_out_LxFxD.shape[1]

    def one_layer(rows_PxF, w_out_FxD, n_valid, n_pos, n_zero, pos_min, pos_max):
        w_out_FxD = w_out_FxD.astype(jnp.float32)
        mag_PxF = magnitudes(rows_PxF, out_norms(w_out_FxD))
        order_PxF = jnp.argsort(mag_PxF, axis=-1)
        norm_P = jnp.linalg.norm(jnp.matmul(rows_PxF, w_out_FxD, precision=PRECISION), axis=-1)
        inv_norm_P = jnp.where(norm_P > 0, 1.0 / jnp.where(norm_P > 0, norm_P, 1.0), 0.0)
        sample_PxF = jnp.take_along_axis(mag_PxF, order_PxF, axis=-1)
        ratio_PxG1 = _proxy_curves(rows_PxF, w_out_FxD, order_PxF, inv_norm_P, min(_PROXY_KNOTS, F))
        weight_P = (inv_norm_P > 0).astype(jnp.float32)
        quantiles_S = jnp.sort(mag_PxF.reshape(-1))
        S = quantiles_S.shape[0]
        grid_Q = quantiles_S[np.linspace(0, S - 1, min(_PROXY_GRID, S)).astype(np.int32)]
        proxy_Q = _proxy_from_counts(ratio_PxG1, weight_P, _counts_below(sample_PxF, grid_Q), F)
        return SearchContext(
            sample_PxF=sample_PxF, ratio_PxG1=ratio_PxG1, weight_P=weight_P, grid_Q=grid_Q,
            proxy_Q=lax.cummax(proxy_Q), quantiles_S=quantiles_S,
            top=jnp.maximum(jnp.nextafter(pos_max, jnp.inf), jnp.finfo(jnp.float32).tiny),
            c_top=jnp.where(n_valid > 0, 1.0, 0.0), n_valid=n_valid.astype(jnp.float32),
            pairs=totals.n_real.astype(jnp.float32) * F, n_pos=n_pos, n_zero=n_zero, pos_min=pos_min,
            pos_max=pos_max,
        )

    # one layer at a time: vmapped, the proxy curves' per-token outputs (a few F × d
    # arrays per `_proxy_curves` step) were held for every layer at once, 0.9 GB at
    # SmolLM2's 30 × 1536 × 576 (bench/results/pretrained_speed_smollm2.txt)
    return lax.map(lambda args: one_layer(*args), (totals.proxy_LxPxF, w_out_LxFxD, totals.n_valid, totals.n_pos,
                                                   totals.n_zero, totals.pos_min, totals.pos_max))


def _counts_below(sample_PxF: Array, grid_Q: Array) -> Array:
    """k_PxQ[p, q] = #{f : sample_PxF[p, f] < grid_Q[q]} (grid_Q sorted), int32.

    Each magnitude is located in the grid (P·F binary searches, "scan") and the counts
    are a cumulative histogram; searching the grid in every row instead (Q binary
    searches per row, or XLA's sort-based searchsorted) was 90% of the set-up on CPU.
    """
    P, Q = sample_PxF.shape[0], grid_Q.shape[0]
    j_PxF = jnp.searchsorted(grid_Q, sample_PxF, side="right", method="scan")  # first q with s < grid_Q[q]
    hist_PxQ1 = jnp.zeros((P, Q + 1), jnp.int32).at[jnp.arange(P)[:, None], j_PxF].add(1)
    return jnp.cumsum(hist_PxQ1, axis=1)[:, :Q]


def _proxy_from_counts(ratio_PxG1: Array, weight_P: Array, k_PxQ: Array, F: int) -> Array:
    """Proxy CETT (Q,) when proxy token p drops its k_PxQ[p, q] smallest neurons."""
    G = ratio_PxG1.shape[1] - 1
    g_PxQ = k_PxQ.astype(jnp.float32) / (-(-F // G))
    i_PxQ = jnp.minimum(jnp.floor(g_PxQ).astype(jnp.int32), G - 1)
    r0_PxQ = jnp.take_along_axis(ratio_PxG1, i_PxQ, axis=1)
    r1_PxQ = jnp.take_along_axis(ratio_PxG1, i_PxQ + 1, axis=1)
    ratio_PxQ = r0_PxQ + (g_PxQ - i_PxQ) * (r1_PxQ - r0_PxQ)  # linear between the knots
    return safe_div(jnp.sum(ratio_PxQ * weight_P[:, None], axis=0), jnp.sum(weight_P))


def proxy_cett(ctx: SearchContext, t: Array) -> Array:
    """CETT of the proxy tokens at threshold t."""
    k_P = jax.vmap(lambda s_F: jnp.searchsorted(s_F, t, side="left", method="compare_all"))(ctx.sample_PxF)
    return _proxy_from_counts(ctx.ratio_PxG1, ctx.weight_P, k_P[:, None], ctx.sample_PxF.shape[1])[0]


def proxy_inverse(ctx: SearchContext, c: Array) -> Array:
    """Threshold where the tabulated proxy CETT reaches c (linear between grid points)."""
    i = jnp.clip(jnp.searchsorted(ctx.proxy_Q, c, side="right", method="compare_all"), 1, ctx.grid_Q.shape[0] - 1)
    c0, c1 = ctx.proxy_Q[i - 1], ctx.proxy_Q[i]
    t0, t1 = ctx.grid_Q[i - 1], ctx.grid_Q[i]
    return t0 + jnp.clip((c - c0) / jnp.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0) * (t1 - t0)


def rank_of(q_S: Array, t: Array) -> Array:
    """Continuous rank of t in the sorted table q_S (piecewise linear, monotone)."""
    i = jnp.clip(jnp.searchsorted(q_S, t, side="left", method="compare_all"), 1, q_S.shape[0] - 1)
    lo, hi = q_S[i - 1], q_S[i]
    return (i - 1) + jnp.clip((t - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)


def value_at(q_S: Array, z: Array) -> Array:
    """Inverse of rank_of."""
    z = jnp.clip(z, 0.0, q_S.shape[0] - 1.0)
    i = jnp.clip(jnp.floor(z).astype(jnp.int32), 0, q_S.shape[0] - 2)
    return q_S[i] + (z - i) * (q_S[i + 1] - q_S[i])


class PreparedSearch(NamedTuple):
    """Target-independent set-up of the search for L layers, reused by `find_prepared`
    for any number of later targets: where the scores are read (`Scores`: cached or
    recomputed per pass), the output kernels, the token masks (nb, B, T...), 1/‖FFN(x)‖
    per token (nb, L, B, T...: 1/F of the scores' memory), the proxy context per layer
    (replicated) and the proxy tokens' scores (L, P, F)."""

    scores: Scores
    w_out_LxFxD: Array
    real: Array
    inv_norm: Array
    ctx: SearchContext
    proxy_LxPxF: Array


class Proxies(NamedTuple):
    """The proxy tokens of a search: block index and position in the block, (P,) int32 each."""

    block_P: Array
    pos_P: Array


def search_proxies(real: Array, d_ff: int) -> Proxies:
    """The proxy tokens (`proxy_tokens`, P ≈ 2¹⁶/F of them) of a search
    over blocks whose real tokens are `real` (nb, B, T...) bool."""
    return Proxies(*proxy_tokens(real.reshape(real.shape[0], -1), proxy_count(d_ff)))


def setup_search_block(placement: ScorePlacement, a: Array, w_out_LxFxD: Array, real: Array, proxies: Proxies,
                       i: Array) -> tuple[Array, Totals]:
    """The set-up pass on block i: (1/‖FFN(x)‖ per token (L, B, T...), the block's totals).

    a: the block's scores (L, B, T..., F) on `placement`; real: its real tokens (B, T...)."""
    return setup_block(placement, a, w_out_LxFxD, real, proxies.pos_P, proxies.block_P == i)


def context(totals_nb: Totals, w_out_LxFxD: Array) -> tuple[SearchContext, Array]:
    """(ctx, proxy_LxPxF) from the blocks' set-up totals (stacked on a leading block axis)."""
    totals = Totals(*(jnp.sum(x, axis=0) for x in totals_nb[:2]), *(normalise_words(jnp.sum(x, axis=0))
                    for x in totals_nb[2:4]), jnp.min(totals_nb.pos_min, axis=0),
                    jnp.max(totals_nb.pos_max, axis=0), jnp.sum(totals_nb.proxy_LxPxF, axis=0))
    return build_context(totals, w_out_LxFxD), totals.proxy_LxPxF


_context = jax.jit(context)


def finish_setup(scores: Scores, w_out_LxFxD: Array, real: Array, inv_norm: Array,
                    totals_nb: Totals) -> PreparedSearch:
    """The `PreparedSearch` of blocks set up one by one (`setup_search_block`).

    Args:
      scores: where the search reads the blocks (cached, or recomputed per pass).
      w_out_LxFxD: the output kernels (L, F, d).
      real: real tokens of every block (nb, B, T...) bool.
      inv_norm: the blocks' 1/‖FFN(x)‖ stacked (nb, L, B, T...).
      totals_nb: the blocks' totals, each field stacked on a leading block axis.
    """
    ctx, proxy_LxPxF = _context(totals_nb, w_out_LxFxD)
    return PreparedSearch(scores, w_out_LxFxD, real, inv_norm, ctx, proxy_LxPxF)


@jax.jit
def setup(scores: Scores, w_out_LxFxD: Array, real: Array) -> tuple[Array, SearchContext, Array]:
    """The set-up pass over `scores`: (inv_norm, ctx, proxy_LxPxF) of `PreparedSearch`
    (not the scores themselves: a jit would copy them). `real`: (nb, B, T...) bool."""
    proxies = search_proxies(real, w_out_LxFxD.shape[1])
    inv_norm, totals_nb = over_blocks(scores, lambda i: setup_search_block(
        scores.placement, scores.block(i), w_out_LxFxD, real[i], proxies, i))
    return (inv_norm,) + context(totals_nb, w_out_LxFxD)

"""Set-up of the exact CETT threshold search (ReLU² §3 / App. C; Sparsing Law App. C).

`threshold_search.py` runs the search; this module prepares, once per layer and for any
number of targets, what its proposals read (step 1 of the algorithm in `find_threshold`):
the layer, a proxy CETT curve, a quantile table and the bracket's ends (`_build_context`).
`prepare_search` and `find_prepared` in `threshold_search.py` are the public entry points.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsity_jax.metrics.cett import Layer, mean_or_zero, prepare_layer

Array = jax.Array

_SAMPLE_PAIRS = 1 << 16  # token×neuron pairs in the proxy sample
_SAMPLE_TOKENS = (16, 256)  # bounds on the number of proxy tokens
_PROXY_FLOATS = 1 << 22  # floats per lax.map step when summing the proxy outputs
_PROXY_KNOTS = 64  # points of each proxy token's CETT curve
_PROXY_GRID = 2048  # thresholds at which the proxy CETT is tabulated


class _Context(NamedTuple):
    """Per-layer, target-independent search data."""

    sample_PxF: Array  # proxy tokens' magnitudes, sorted per token
    ratio_PxG1: Array  # proxy tokens' CETT after dropping their smallest j·F/G neurons
    weight_P: Array  # 1 for proxy tokens with a non-zero FFN output
    grid_Q: Array  # thresholds (every S/Q-th proxy magnitude) where the proxy is tabulated
    proxy_Q: Array  # proxy CETT at grid_Q, made non-decreasing
    quantiles_S: Array  # all proxy magnitudes, sorted (the quantile table)
    top: Array  # threshold that drops everything
    c_top: Array  # CETT at top: 1, or 0 when no token counts
    n_pos: Array  # int32: real pairs with a positive magnitude
    n_zero: Array  # int32: real pairs with a zero magnitude
    pos_min: Array  # smallest positive real magnitude
    pos_max: Array  # largest real magnitude


def _proxy_curves(layer: Layer, idx_P: Array, order_PxF: Array, n_knots: int) -> Array:
    """Per proxy token, CETT after dropping its j·F/G smallest neurons, j = 0..G."""
    F, d = layer.w_out_FxD.shape
    block = -(-F // n_knots)
    P = idx_P.shape[0]

    def one_token(args):
        tok, order_F, inv_norm = args
        out_FxD = layer.a_NxF[tok, order_F][:, None] * layer.w_out_FxD[order_F]
        out_FxD = jnp.pad(out_FxD, ((0, n_knots * block - F), (0, 0)))
        sums_GxD = jnp.cumsum(out_FxD.reshape(n_knots, block, d).sum(axis=1), axis=0)
        return jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.linalg.norm(sums_GxD, axis=-1) * inv_norm])

    batch = max(1, min(P, _PROXY_FLOATS // (F * d)))
    return lax.map(one_token, (idx_P, order_PxF, layer.inv_norm_N[idx_P]), batch_size=batch)


def _build_context(layer: Layer) -> _Context:
    """The target-independent search data of one prepared layer (`cett.prepare_layer`:
    magnitudes ‖n_i‖, 1/‖FFN(x)‖, token mask):
      * a proxy — P ≈ 2¹⁶/F real tokens at golden-ratio ranks (spread over the batch,
        deterministic, no PRNG) whose CETT curves are computed exactly at 64 knots (sort
        their F magnitudes, cumulate their outputs), tabulated at 2048 thresholds
        through counts below each threshold, and inverted linearly between grid points;
      * the proxy tokens' sorted magnitudes as a quantile table (`_rank_of` /
        `_value_at`), through which the search maps a dropped count K to a threshold;
      * the bracket's ends and counts: the "drop all" threshold and its CETT, the
        numbers of positive and zero real magnitudes, the smallest and largest of them.
    """
    F = layer.a_NxF.shape[1]
    P = int(np.clip(-(-_SAMPLE_PAIRS // F), *_SAMPLE_TOKENS))
    # Real tokens at golden-ratio ranks: spread over the batch, deterministic, no PRNG.
    rank_P = jnp.floor((np.arange(P) * 0.6180339887 + 0.5) % 1.0 * layer.n_real).astype(jnp.int32)
    rank_P = jnp.clip(rank_P, 0, jnp.maximum(layer.n_real.astype(jnp.int32) - 1, 0))
    idx_P = jnp.argsort(~layer.real_N, stable=True)[rank_P]
    mag_PxF = layer.mag_NxF[idx_P]
    order_PxF = jnp.argsort(mag_PxF, axis=-1)
    finite_NxF = jnp.isfinite(layer.mag_NxF)
    pos_NxF = finite_NxF & (layer.mag_NxF > 0)
    pos_max = jnp.max(jnp.where(finite_NxF, layer.mag_NxF, 0.0))
    n_pos = jnp.sum(pos_NxF, dtype=jnp.int32)
    sample_PxF = jnp.take_along_axis(mag_PxF, order_PxF, axis=-1)
    ratio_PxG1 = _proxy_curves(layer, idx_P, order_PxF, min(_PROXY_KNOTS, F))
    weight_P = (layer.inv_norm_N[idx_P] > 0).astype(jnp.float32)
    quantiles_S = jnp.sort(mag_PxF.reshape(-1))
    S = quantiles_S.shape[0]
    grid_Q = quantiles_S[np.linspace(0, S - 1, min(_PROXY_GRID, S)).astype(np.int32)]
    proxy_Q = _proxy_from_counts(ratio_PxG1, weight_P, _counts_below(sample_PxF, grid_Q), F)
    return _Context(
        sample_PxF=sample_PxF,
        ratio_PxG1=ratio_PxG1,
        weight_P=weight_P,
        grid_Q=grid_Q,
        proxy_Q=lax.cummax(proxy_Q),
        quantiles_S=quantiles_S,
        top=jnp.maximum(jnp.nextafter(pos_max, jnp.inf), jnp.finfo(jnp.float32).tiny),
        c_top=jnp.where(layer.n_valid > 0, 1.0, 0.0),
        n_pos=n_pos,
        n_zero=jnp.sum(finite_NxF, dtype=jnp.int32) - n_pos,
        pos_min=jnp.min(jnp.where(pos_NxF, layer.mag_NxF, jnp.inf)),
        pos_max=pos_max,
    )


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
    return mean_or_zero(jnp.sum(ratio_PxQ * weight_P[:, None], axis=0), jnp.sum(weight_P))


def _proxy_cett(ctx: _Context, t: Array) -> Array:
    """CETT of the proxy tokens at threshold t."""
    k_P = jax.vmap(lambda s_F: jnp.searchsorted(s_F, t, side="left", method="compare_all"))(ctx.sample_PxF)
    return _proxy_from_counts(ctx.ratio_PxG1, ctx.weight_P, k_P[:, None], ctx.sample_PxF.shape[1])[0]


def _proxy_inverse(ctx: _Context, c: Array) -> Array:
    """Threshold where the tabulated proxy CETT reaches c (linear between grid points)."""
    i = jnp.clip(jnp.searchsorted(ctx.proxy_Q, c, side="right", method="compare_all"), 1, ctx.grid_Q.shape[0] - 1)
    c0, c1 = ctx.proxy_Q[i - 1], ctx.proxy_Q[i]
    t0, t1 = ctx.grid_Q[i - 1], ctx.grid_Q[i]
    return t0 + jnp.clip((c - c0) / jnp.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0) * (t1 - t0)


def _rank_of(q_S: Array, t: Array) -> Array:
    """Continuous rank of t in the sorted table q_S (piecewise linear, monotone)."""
    i = jnp.clip(jnp.searchsorted(q_S, t, side="left", method="compare_all"), 1, q_S.shape[0] - 1)
    lo, hi = q_S[i - 1], q_S[i]
    return (i - 1) + jnp.clip((t - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)


def _value_at(q_S: Array, z: Array) -> Array:
    """Inverse of _rank_of."""
    z = jnp.clip(z, 0.0, q_S.shape[0] - 1.0)
    i = jnp.clip(jnp.floor(z).astype(jnp.int32), 0, q_S.shape[0] - 2)
    return q_S[i] + (z - i) * (q_S[i + 1] - q_S[i])


class PreparedSearch(NamedTuple):
    """Target-independent set-up of `find_threshold` for L layers (leading L axis on every
    field): reused by `find_prepared` for any number of later targets, so a caller that
    asks for thresholds again and again on the same activations (the PPL-p% search, one
    CETT per step) pays the set-up once. Holds the magnitudes: about 2× `a`'s memory."""

    layer: Layer
    ctx: _Context


def _prepare(a_LxNxF, w_out_LxFxD, mask_N) -> PreparedSearch:
    def one_layer(a_NxF, w_out_FxD):
        layer = prepare_layer(a_NxF, w_out_FxD, mask_N)
        return layer, _build_context(layer)

    return PreparedSearch(*jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD))

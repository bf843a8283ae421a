"""Building a prepared threshold search (`PreparedSearch`), at once or block by block.

A `PreparedSearch` holds the target-independent set-up of the exact CETT threshold
search (step 1 of `threshold_search.find_threshold`); `find_prepared` then searches it
for any number of targets. Two ways to build one:
  * from scores held as one array: `threshold_search.prepare_search(a, w_out, mask)`;
  * block by block, where the caller produces the scores itself, e.g. a model's dense
    pass over validation batches (`search.thresholds.dense_pass`), which caches the
    blocks or recomputes them at every pass (`Scores`):

        proxies = search_proxies(real, d_ff)        # once: real (nb, B, T...) bool
        # per block i, inside the caller's jit, on the block's mesh (`Layout`):
        inv_i, totals_i = setup_search_block(layout, a_i, w_out, real[i], proxies, i)
        prepared = finish_setup(scores, w_out, real, inv_norm, totals)  # stacked per block

Both ways run the same code (`setup` is the first way's jitted loop over the blocks).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sparsity_jax.metrics.cett import normalise_words
from sparsity_jax.metrics.threshold_pass import Layout, Scores, over_blocks, setup_block
from sparsity_jax.metrics.threshold_prep import SearchContext, Totals, build_context, proxy_count, proxy_tokens

Array = jax.Array


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
    """The proxy tokens (`threshold_prep.proxy_tokens`, P ≈ 2¹⁶/F of them) of a search
    over blocks whose real tokens are `real` (nb, B, T...) bool."""
    return Proxies(*proxy_tokens(real.reshape(real.shape[0], -1), proxy_count(d_ff)))


def setup_search_block(layout: Layout, a: Array, w_out_LxFxD: Array, real: Array, proxies: Proxies,
                       i: Array) -> tuple[Array, Totals]:
    """The set-up pass on block i: (1/‖FFN(x)‖ per token (L, B, T...), the block's totals).

    a: the block's scores (L, B, T..., F) on `layout`; real: its real tokens (B, T...)."""
    return setup_block(layout, a, w_out_LxFxD, real, proxies.pos_P, proxies.block_P == i)


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
        scores.layout, scores.block(i), w_out_LxFxD, real[i], proxies, i))
    return (inv_norm,) + context(totals_nb, w_out_LxFxD)

"""Neuron-level activation statistics (Sparsing Law §4 / App. D, ReLU² §5).

Inputs are boolean masks of ACTIVE units `mask` (..., tokens..., F) — e.g. from
`baselines.py`, `|a| ≥ t/‖w_out row‖` for a CETT threshold, or `a > 0` — with an
explicit `token_mask` (tokens...) so padding never counts. Which axes are token axes:
those of `token_mask`; without one, every axis but F unless `layer_axes` says how many
leading axes are layers. Leading axes before the token axes (layers) are kept.
With `axis_name` (inside shard_map / pmap, tokens split over that mesh axis) counts are
psum'd, so every statistic is global, never a mean of per-device means.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import run_auto
from sparsity_jax.metrics.reduce import AxisName, check_per_token, psum, safe_div, trailing_token_shape

Array = jax.Array


def _flatten_tokens(mask: Array, token_mask: Array | None, layer_axes: int) -> tuple[Array, Array, tuple[int, ...]]:
    """Returns (active_LxNxF float32 with padding cleared, real_N float32, layer shape)."""
    mask = jnp.asarray(mask)
    token_shape = trailing_token_shape(mask.shape, token_mask, layer_axes)
    if token_mask is None:
        real_N = jnp.ones((math.prod(token_shape),), jnp.float32)
    else:  # 0/1 weights kept as given
        check_per_token(token_mask, token_shape, f"the mask {mask.shape}")
        real_N = jnp.asarray(token_mask).reshape(-1).astype(jnp.float32)
    lead = mask.shape[:mask.ndim - 1 - len(token_shape)]
    active_LxNxF = mask.reshape((math.prod(lead), real_N.shape[0], mask.shape[-1])).astype(jnp.float32)
    return active_LxNxF * real_N[:, None], real_N, lead


def neuron_frequency(
    mask: Array, token_mask: Array | None = None, axis_name: AxisName = None, *, layer_axes: int = 0
) -> Array:
    """Fraction of real tokens on which each neuron is active: (..., F) float32, 0 with no real token.

    Args:
      mask: bool (..., tokens..., F), True = active.
      token_mask: bool (tokens...); None = all real.
      axis_name: mesh axis the tokens are split over (shard_map / pmap), or None.
      layer_axes: leading non-token axes when token_mask is None.
    """
    def run(mask, token_mask):
        active_LxNxF, real_N, lead = _flatten_tokens(mask, token_mask, layer_axes)
        count_LxF, n_real = psum((jnp.sum(active_LxNxF, axis=1), jnp.sum(real_N)), axis_name)
        return safe_div(count_LxF, n_real).reshape(lead + count_LxF.shape[-1:])

    return run_auto(run, mask, token_mask)


def dead_ratio(freq: Array, threshold: float = 1e-3) -> Array:
    """Fraction of neurons active on fewer than `threshold` (0.1%) of tokens: shape freq.shape[:-1]."""
    return jnp.mean(jnp.asarray(freq) < threshold, axis=-1)


def hot_neuron_cdf(freq: Array) -> Array:
    """Share of all activations covered by the j+1 most frequent neurons, (..., F).

    Neurons sorted by frequency, descending; the last entry is 1 (0 everywhere when no
    neuron is ever active). The CDF curve of ReLU² §5 / "hot-activated neurons".
    """
    sorted_F = -jnp.sort(-jnp.asarray(freq, jnp.float32), axis=-1)
    cum_F = jnp.cumsum(sorted_F, axis=-1)
    return safe_div(cum_F, cum_F[..., -1:])


def per_token_id_activation_ratio(
    mask: Array,
    token_ids: Array,
    vocab_size: int,
    token_mask: Array | None = None,
    axis_name: AxisName = None,
    *,
    layer_axes: int = 0,
) -> tuple[Array, Array]:
    """Mean activation ratio (#active / F per token) for each vocabulary id.

    Args:
      mask: bool (..., tokens..., F), True = active.
      token_ids: int (tokens...), the input id of each token.
      vocab_size: number of ids V.
      token_mask, axis_name, layer_axes: as in `neuron_frequency`.
    Returns:
      (ratio (..., V) float32, count (V,) int32 real occurrences of each id). Ids never
      seen get ratio 0 (use count to tell them apart), never NaN.
    """
    def run(mask, token_ids, token_mask):
        active_LxNxF, real_N, lead = _flatten_tokens(mask, token_mask, layer_axes)
        ids_N = jnp.asarray(token_ids).reshape(-1)
        if ids_N.shape[0] != real_N.shape[0]:
            raise UserError(
                f"Pass token_ids with the token shape of the mask {jnp.shape(mask)}; got {jnp.shape(token_ids)}."
            )
        segment = lambda x_N: jax.ops.segment_sum(x_N, ids_N, num_segments=vocab_size)  # noqa: E731
        sum_LxV = psum(jax.vmap(segment)(jnp.mean(active_LxNxF, axis=-1)), axis_name)
        count_V = psum(segment(real_N), axis_name)
        return safe_div(sum_LxV, count_V).reshape(lead + (vocab_size,)), count_V.astype(jnp.int32)

    return run_auto(run, mask, token_ids, token_mask)

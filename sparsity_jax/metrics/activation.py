"""Per-layer activation ratio: the fraction of hidden units used per real token.

activation ratio = 1 − sparsity (Sparsing Law §2.2); padding never counts. With
`axis_name` (inside pmap / shard_map) numerator and denominator are summed over that
axis, so the result is the global mean, not a mean of per-device means.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsity_jax.metrics.reduce import AxisName, psum

Array = jax.Array


def activation_ratio(mask: Array, token_mask: Array | None = None, axis_name: AxisName = None) -> Array:
    """Mean over real tokens of (#units used / F).

    Args:
      mask: bool (B, T, F) or (L, B, T, F) hidden-unit use.
      token_mask: bool/0-1 (B, T), True for real tokens; None = all real.
      axis_name: mapped axis to reduce over (pmap / shard_map), or None.
    Returns:
      float32 scalar, or (L,) when mask has a layer axis. 0 when there is no real token.
    """
    per_token_xBxT = jnp.mean(mask.astype(jnp.float32), axis=-1)
    tm_BxT = jnp.ones(mask.shape[-3:-1], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    num = jnp.sum(per_token_xBxT * tm_BxT, axis=(-2, -1))
    den = jnp.sum(tm_BxT)
    num, den = psum((num, den), axis_name)
    return num / jnp.maximum(den, 1.0)

"""Next-token choice from logits: greedy, temperature and nucleus (top-p) sampling."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def top_p_mask(logits_BxV: Array, top_p: Array | float) -> Array:
    """Bool (B, V): the smallest set of most likely tokens whose probability reaches
    `top_p` (the most likely token always; ties with the last kept logit kept too)."""
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the strictly more likely tokens
    n_B = jnp.maximum(jnp.sum(before_BxV < top_p, axis=-1), 1)
    last_B = jnp.take_along_axis(sorted_BxV, (n_B - 1)[:, None], axis=-1)
    return logits_BxV >= last_B


def sample(logits_BxV: Array, key: Array, temperature: Array | float, top_p: Array | float = 1.0) -> Array:
    """Next tokens (B,) int32: argmax when temperature ≤ 0, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    masked_BxV = jnp.where(top_p_mask(scaled_BxV, top_p), scaled_BxV, -jnp.inf)
    drawn_B = jax.random.categorical(key, masked_BxV, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn_B, greedy_B)

"""What every metric shares: the mapped-axis reductions, safe ratios and the checks of a
token mask.

`axis_name` semantics (every metric): None for plain arrays or `jax.jit` on globally
sharded arrays (GSPMD makes the reductions global); inside `jax.shard_map` / `jax.pmap`
the mapped axis name(s), over which numerators and denominators are psum'd, so results
are global means, never means of per-device means. A `token_mask` is bool (or 0/1) over
the token axes, True on real tokens; None means every token is real.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sparsity_jax.errors import UserError

Array = jax.Array
AxisName = str | tuple[str, ...] | None


def psum(x, axis_name: AxisName):
    """lax.psum of a pytree over `axis_name`; the identity for None (or no axis)."""
    return x if not axis_name else lax.psum(x, axis_name)


def safe_div(num: Array, den: Array) -> Array:
    """num / den, and 0 where den ≤ 0 (a mean or ratio with nothing to average: 0, never NaN)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0.0)


def check_per_token(x: Array, token_shape: Sequence[int], of: str, name: str = "token_mask") -> None:
    """UserError unless `x` (a token mask, segment ids, token ids…) has the token shape."""
    if tuple(jnp.shape(x)) != tuple(token_shape):
        raise UserError(f"Pass {name} with the token shape {tuple(token_shape)} of {of}; got {jnp.shape(x)}.")


def real_tokens(token_mask: Array | None, token_shape: Sequence[int], of: str) -> Array:
    """`token_mask` as bool of `token_shape` (all True for None), checked against it."""
    if token_mask is None:
        return jnp.ones(tuple(token_shape), bool)
    check_per_token(token_mask, token_shape, of)
    return jnp.asarray(token_mask).astype(bool)


def trailing_token_shape(shape: Sequence[int], token_mask: Array | None, lead: int = 0) -> tuple[int, ...]:
    """The token axes of an array (…, tokens…, F): those of `token_mask` (the axes just
    before F), or without one every axis after the first `lead` but F. An array with
    fewer axes than the mask gives a shape the mask's check then refuses."""
    shape = tuple(shape)
    if token_mask is None:
        return shape[lead:-1]
    n = len(jnp.shape(token_mask))
    return shape[-1 - n:-1] if n < len(shape) else shape[:-1]


def check_batch_rank(x: Array, what: str) -> None:
    """UserError unless `x` is (B, T, F) or (L, B, T, F)."""
    if jnp.ndim(x) not in (3, 4):
        raise UserError(f"Pass {what} as (B, T, F) or (L, B, T, F); got shape {jnp.shape(x)}.")

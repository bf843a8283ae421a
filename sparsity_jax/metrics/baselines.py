"""Baseline activation-sparsity masks on the gate score (Sparsing Law §4.1).

The gate score `s` is σ(W_gate x) for gated FFNs, or the activation score `a` for
non-gated ones, shape (tokens..., F) — optionally with leading layer axes. Every
function here returns the mask of ACTIVE units: True = the neuron is kept (computed),
False = it is in the inactive set D. The papers' inactive sets are the complements:
  * straightforward ReLU: D = {i : s_i = 0}            -> `zero_mask`
  * Top-k: keep the k largest |s_i|                     -> `topk_mask`
  * FAT-ε: D = {i : |s_i| < ε}                          -> `fat_mask`
Padding is not masked here (the statistics take `token_mask`), except that the global
top-k never spends its budget on padding tokens.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import run_auto
from sparsity_jax.metrics.reduce import real_tokens, trailing_token_shape
from sparsity_jax.nn.sparsify import fat_keep, topk_keep

Array = jax.Array


def zero_mask(s: Array) -> Array:
    """Active units of the straightforward ReLU baseline: s ≠ 0. Shape of s, bool."""
    return jnp.asarray(s) != 0


def fat_mask(s: Array, eps: float | Array) -> Array:
    """Active units of FAT-ε: |s| ≥ ε (inactive D = {|s| < ε}). Shape of s, bool."""
    return fat_keep(jnp.asarray(s), eps)


def topk_mask(s: Array, k: int, token_mask: Array | None = None, per_token: bool = True) -> Array:
    """Active units of the Top-k baseline. Shape of s, bool.

    Args:
      s: gate scores (..., tokens..., F).
      k: with per_token, units kept per token (exactly k, ties broken by index);
        otherwise the budget is k/F of the real token×neuron pairs, spent on the
        largest |s| over all real tokens at once (the reference code's tensor-wide
        top-k), i.e. exactly k · (#real tokens) pairs.
      token_mask: bool (tokens...), True for real tokens; it also defines which axes are
        token axes for the global top-k (leading axes before them, e.g. a layer axis,
        get one selection each). None: every axis but F is a token axis.
      per_token: see k.
    """
    s = jnp.asarray(s)
    F = s.shape[-1]
    if not 0 <= k <= F:
        raise UserError(f"Pass k between 0 and F = {F} for the top-k baseline; got {k}.")
    spec = getattr(getattr(jax.typeof(s), "sharding", None), "spec", None)
    return run_auto(lambda s, token_mask: _topk(s, k, token_mask, per_token), s, token_mask, out_sharding=spec)


def _topk(s: Array, k: int, token_mask: Array | None, per_token: bool) -> Array:
    F = s.shape[-1]
    if per_token:
        return topk_keep(s, k)
    token_shape = trailing_token_shape(s.shape, token_mask)
    real_N = real_tokens(token_mask, token_shape, f"s {s.shape}").reshape(-1)
    lead = s.shape[: s.ndim - 1 - len(token_shape)]
    abs_GxNxF = jnp.abs(s).reshape((math.prod(lead), real_N.shape[0], F))
    score_GxM = jnp.where(real_N[:, None], abs_GxNxF, -jnp.inf).reshape((abs_GxNxF.shape[0], -1))
    budget = k * jnp.sum(real_N)
    _, idx_GxK = lax.top_k(score_GxM, k * real_N.shape[0])
    keep_K = jnp.arange(idx_GxK.shape[-1]) < budget
    rows = jnp.arange(score_GxM.shape[0])[:, None]
    active_GxM = jnp.zeros(score_GxM.shape, bool).at[rows, idx_GxK].set(keep_K)
    return active_GxM.reshape(s.shape)

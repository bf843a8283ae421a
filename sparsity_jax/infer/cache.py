"""The preallocated KV cache of decoding and the masks / positions it implies.

Layout: one key and one value array per layer, `k_BxSxGxK` (batch, cache slot, KV head,
head dim), in a tuple over layers, so each layer's update is one in-place
`dynamic_update_slice` on a donated buffer; S (the cache length) is static, so a
decoder compiles once per (batch, cache length).

Prompts of different lengths are LEFT-padded to a common length P: every row writes
slot `start + i` at the same time, so one slice update serves the whole batch and all
rows finish prefill at slot P. Row b's real tokens start at slot `pad_B[b]`; its RoPE
positions are `slot − pad_B[b]` (the real tokens sit at positions 0, 1, … exactly as in
an unpadded forward pass) and its queries never see slots before `pad_B[b]`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from sparsity_jax.nn.model import DTYPES, ModelConfig
from sparsity_jax.runtime.sharding import logical_sharding

Array = jax.Array


class KVCache(NamedTuple):
    """Keys / values per layer ((B, S, G, K) each) and the left padding of each row (B,)."""

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    pad_B: Array

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


def cache_spec(cfg: ModelConfig, batch: int, length: int, mesh: Mesh) -> NamedSharding:
    """Sharding of one (B, S, G, K) cache array: rows over (data, fsdp) and KV heads over
    `tensor` where they divide, like the activations and the attention kernels."""
    shape = (batch, length, cfg.kv_heads, cfg.d_model // cfg.num_heads)
    return logical_sharding(("cache_batch", "cache_sequence", "cache_heads", "cache_kv"), shape, mesh)


def init_cache(cfg: ModelConfig, pad_B: Array, length: int) -> KVCache:
    """An all-zero cache of `length` slots for len(pad_B) rows in the model's compute dtype."""
    shape = (pad_B.shape[0], length, cfg.kv_heads, cfg.d_model // cfg.num_heads)
    zeros = tuple(jnp.zeros(shape, DTYPES[cfg.dtype]) for _ in range(cfg.num_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, DTYPES[cfg.dtype]) for _ in range(cfg.num_layers)),
                   pad_B.astype(jnp.int32))


def positions(pad_B: Array, start: Array, t: int) -> Array:
    """RoPE positions (B, T) of the T tokens written at slots [start, start + T); padding gets 0."""
    slot_BxT = start + jnp.arange(t, dtype=jnp.int32)[None, :]
    return jnp.maximum(slot_BxT - pad_B[:, None], 0)


def decode_mask(pad_B: Array, start: Array, t: int, length: int) -> Array:
    """(B, 1, T, S) bool: the query at slot start + i sees slots j with pad_B ≤ j ≤ start + i.

    A padding query (slot < pad_B) sees only its own slot, so its (unused) output stays
    finite and it never mixes into a real row.
    """
    q_T = start + jnp.arange(t, dtype=jnp.int32)
    j_S = jnp.arange(length, dtype=jnp.int32)
    causal_TxS = j_S[None, :] <= q_T[:, None]
    real_BxS = j_S[None, :] >= pad_B[:, None]
    own_TxS = j_S[None, :] == q_T[:, None]
    mask_BxTxS = (causal_TxS[None] & real_BxS[:, None, :]) | own_TxS[None]
    return mask_BxTxS[:, None]


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[Array, Array]:
    """Token rows (B, P) left-padded to the longest prompt, and each row's padding (B,)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    rows = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    return jnp.asarray(rows, jnp.int32), jnp.asarray([width - len(p) for p in prompts], jnp.int32)

"""Allocating, sharding and left-padding the KV cache of decoding.

The cache type, its masks and positions live with the attention that reads them
(`nn.attention.KVCache`, `decode_mask`, `cache_positions`; layout and padding rules
there); S (the cache length) is static, so a decoder compiles once per (batch, cache
length).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from sparsity_jax.nn.attention import KVCache, cache_positions, decode_mask
from sparsity_jax.nn.model import DTYPES, ModelConfig
from sparsity_jax.devices.sharding import logical_sharding

Array = jax.Array
__all__ = ["KVCache", "cache_positions", "decode_mask", "cache_spec", "init_cache", "left_pad"]


def cache_spec(cfg: ModelConfig, batch: int, length: int, mesh: Mesh) -> NamedSharding:
    """Sharding of the (L, B, S, G, K) key (or value) array: layers unsharded like stacked
    parameters, rows over (data, fsdp) and KV heads over `tensor` where they divide, like
    the activations and the attention kernels."""
    shape = (cfg.num_layers, batch, length, cfg.kv_heads, cfg.heads_dim)
    return logical_sharding(("layers", "cache_batch", "cache_sequence", "cache_heads", "cache_kv"), shape, mesh)


def init_cache(cfg: ModelConfig, pad_B: Array, length: int) -> KVCache:
    """An all-zero cache of `length` slots for len(pad_B) rows in the model's compute dtype."""
    shape = (cfg.num_layers, pad_B.shape[0], length, cfg.kv_heads, cfg.heads_dim)
    return KVCache(jnp.zeros(shape, DTYPES[cfg.dtype]), jnp.zeros(shape, DTYPES[cfg.dtype]), pad_B.astype(jnp.int32))


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[Array, Array]:
    """Token rows (B, P) left-padded to the longest prompt, and each row's padding (B,)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    rows = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    return jnp.asarray(rows, jnp.int32), jnp.asarray([width - len(p) for p in prompts], jnp.int32)

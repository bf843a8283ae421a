"""Multi-head causal self-attention with RoPE, grouped-query heads and packed segments.

`Attention.__call__` is the training / evaluation path over whole sequences;
`Attention.cached` is one decoding call against a preallocated `KVCache`: it writes the
new keys and values at the cache slots [start, start + T) and attends over the whole
cache under `decode_mask`. Both share `qkv` and `attend`.

Cache layout: one key and one value array for all layers, (L, B, S, G, K), stacked on
the leading layer axis like scanned parameters (as MaxText's scanned decoder keeps it),
so layer i's slice (B, S, G, K) rides through the model's layer loop (`nn.stack.run`,
scanned or unrolled) as a per-layer input and its update as a per-layer output. Prompts
are LEFT-padded to a common length P (`infer.cache.left_pad`): every row writes slot
`start + i` at the same time and all rows finish prefill at slot P.
Row b's real tokens start at slot `pad_B[b]`; its RoPE positions are `slot − pad_B[b]`
(the real tokens sit at positions 0, 1, … exactly as in an unpadded forward pass) and
its queries never see slots before `pad_B[b]`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity_jax.nn.layers import (RMSNorm, apply_rope, constrain, default_frequencies, get_initializer, param,
                                    rope_frequencies)

Array = jax.Array


def attention_mask(segment_ids_BxT: Array) -> Array:
    """Causal mask that never crosses packed segments: (B, 1, T, T) bool.

    Query i may attend to key j iff j <= i and both belong to the same segment. Padding
    (segment 0) attends to padding only; its loss weight is 0.
    """
    t = segment_ids_BxT.shape[-1]
    causal_TxT = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
    same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    return (causal_TxT[None] & same_BxTxT)[:, None]


def grouped_attention(q_BxTxHxK: Array, k_BxSxGxK: Array, v_BxSxGxK: Array, mask_Bx1xTxS: Array,
                      scale: float | None = None) -> Array:
    """softmax(q·kᵀ·scale under the mask)·v (scale None: 1/√K) with G key/value heads
    shared by H/G query heads each: `jax.nn.dot_product_attention`'s numbers (its "xla"
    implementation), with the batch and group axes leading every dot. XLA:CPU runs batched
    dots fast only in that layout: 1.7–2× on the attention of a SmolLM2-shaped model
    (bench/results/pretrained_speed*)."""
    B, T, H, K = q_BxTxHxK.shape
    S, G = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
    R = H // G
    q_BxGxMxK = jnp.transpose(q_BxTxHxK.reshape(B, T, G, R, K), (0, 2, 3, 1, 4)).reshape(B, G, R * T, K)
    k_BxGxSxK, v_BxGxSxK = (jnp.transpose(x, (0, 2, 1, 3)) for x in (k_BxSxGxK, v_BxSxGxK))
    s_BxGxMxS = jnp.einsum("bgmk,bgsk->bgms", q_BxGxMxK, k_BxGxSxK, preferred_element_type=jnp.float32)
    s_BxGxRxTxS = s_BxGxMxS.reshape(B, G, R, T, S) * (1.0 / K ** 0.5 if scale is None else scale)
    s_BxGxRxTxS = jnp.where(mask_Bx1xTxS[:, :, None], s_BxGxRxTxS, jnp.finfo(jnp.float32).min)
    p_BxGxMxS = jax.nn.softmax(s_BxGxRxTxS, axis=-1).astype(v_BxSxGxK.dtype).reshape(B, G, R * T, S)
    o_BxGxMxK = jnp.einsum("bgms,bgsk->bgmk", p_BxGxMxS, v_BxGxSxK)
    return jnp.transpose(o_BxGxMxK.reshape(B, G, R, T, K), (0, 3, 1, 2, 4)).reshape(B, T, H, K)


class KVCache(NamedTuple):
    """Keys and values of every layer, (L, B, S, G, K) each, and the left padding of each row (B,)."""

    k: Array
    v: Array
    pad_B: Array

    @property
    def length(self) -> int:
        """S, the number of cache slots."""
        return self.k.shape[2]


def cache_positions(pad_B: Array, start: Array, t: int) -> Array:
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


class Attention(nnx.Module):
    """Kernels: wq (d, H, K) ('embed', 'heads', None); wk, wv (d, G, K); wo (H, K, d).

    Options of pretrained families (`sparsity_jax.hf`), all off by default: `head_dim` K
    other than d / H, biases bq (H, K), bk, bv (G, K) (Qwen2), an RMSNorm over each
    head's K features of q and k before RoPE (Qwen3), scaled RoPE frequencies
    (`rope_scaling` = (kind, factor, low_freq_factor, high_freq_factor, original length),
    see `layers.rope_frequencies`), a sliding window (Mistral: a query sees the `window`
    latest positions, itself included) and scores scaled by 1/√`query_scalar` instead of
    1/√K (Gemma's query_pre_attn_scalar). With `local_theta` > 0 (Gemma 3) the window and
    RoPE base `local_theta` (unscaled) hold only where the call's `local` flag (a per-layer
    bool, traced: it rides through the layer scan) is true; elsewhere the attention is
    global, with `rope_theta` and its scaling. The norm scales use `norm_offset`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        rngs: nnx.Rngs,
        rope_theta: float = 10000.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        head_dim: int = 0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        rope_scaling: tuple = ("none",),
        window: int = 0,
        local_theta: float = 0.0,
        query_scalar: float = 0.0,
        norm_offset: float = 0.0,
    ):
        head_dim = head_dim or d_model // num_heads
        init = get_initializer("lecun_normal")
        proj_in = lambda g: param(rngs, init, (d_model, g, head_dim), ("embed", "heads", None), param_dtype)  # noqa: E731
        self.wq = proj_in(num_heads)
        self.wk = proj_in(num_kv_heads)
        self.wv = proj_in(num_kv_heads)
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)
        self.wo = param(rngs, out_init, (num_heads, head_dim, d_model), ("heads", None, "embed"), param_dtype)
        if qkv_bias:
            zeros = nnx.initializers.zeros_init()
            self.bq = param(rngs, zeros, (num_heads, head_dim), ("heads", None), param_dtype)
            self.bk = param(rngs, zeros, (num_kv_heads, head_dim), ("heads", None), param_dtype)
            self.bv = param(rngs, zeros, (num_kv_heads, head_dim), ("heads", None), param_dtype)
        if qk_norm:
            self.q_norm, self.k_norm = (RMSNorm(head_dim, eps=norm_eps, dtype=dtype, param_dtype=param_dtype,
                                                axes=(None,), offset=norm_offset) for _ in range(2))
        self.qkv_bias, self.qk_norm, self.window = qkv_bias, qk_norm, window
        self.rope_scaling = tuple(rope_scaling)  # (kind, factor, low, high, original length): static
        self.rope_theta, self.local_theta, self.query_scalar = rope_theta, local_theta, query_scalar
        self.dtype = dtype

    def frequencies(self, head_dim: int, local: Array | None) -> Array | None:
        """RoPE inverse frequencies (K/2,) of this layer (None: the unscaled global ones,
        `apply_rope`'s default); with a `local` flag, the local or global ones by it."""
        freq = None if self.rope_scaling[0] == "none" else rope_frequencies(head_dim, self.rope_theta,
                                                                            *self.rope_scaling)
        if local is None or not self.local_theta:
            return freq
        glob = default_frequencies(head_dim, self.rope_theta) if freq is None else freq
        return jnp.where(local, default_frequencies(head_dim, self.local_theta), glob)

    def qkv(self, x_BxTxD: Array, positions_BxT: Array, local: Array | None = None) -> tuple[Array, Array, Array]:
        """Queries (B, T, H, K) and keys (B, T, G, K) with RoPE at `positions`; values (B, T, G, K)."""
        x = x_BxTxD.astype(self.dtype)
        w = lambda v: v[...].astype(self.dtype)  # noqa: E731
        q_BxTxHxK = jnp.einsum("btd,dhk->bthk", x, w(self.wq))
        k_BxTxGxK = jnp.einsum("btd,dgk->btgk", x, w(self.wk))
        v_BxTxGxK = jnp.einsum("btd,dgk->btgk", x, w(self.wv))
        if self.qkv_bias:
            q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = q_BxTxHxK + w(self.bq), k_BxTxGxK + w(self.bk), v_BxTxGxK + w(self.bv)
        if self.qk_norm:
            q_BxTxHxK, k_BxTxGxK = self.q_norm(q_BxTxHxK), self.k_norm(k_BxTxGxK)
        freq = self.frequencies(q_BxTxHxK.shape[-1], local)
        q_BxTxHxK = apply_rope(q_BxTxHxK, positions_BxT, self.rope_theta, freq)
        k_BxTxGxK = apply_rope(k_BxTxGxK, positions_BxT, self.rope_theta, freq)
        heads = lambda y: constrain(y, ("activation_batch", "activation_length", "activation_heads", None))  # noqa: E731
        return heads(q_BxTxHxK), heads(k_BxTxGxK), heads(v_BxTxGxK)

    def windowed(self, mask_Bx1xTxS: Array, q_T: Array, k_S: Array, local: Array | None = None) -> Array:
        """`mask` limited to keys less than `window` positions (or cache slots) back (with
        per-layer local attention: only where `local`)."""
        if not self.window:
            return mask_Bx1xTxS
        near = (q_T[..., :, None] - k_S[..., None, :]) < self.window
        if local is not None and self.local_theta:
            near = near | jnp.logical_not(local)
        return mask_Bx1xTxS & near[..., None, :, :]

    def attend(self, q_BxTxHxK: Array, k_BxSxGxK: Array, v_BxSxGxK: Array, mask_Bx1xTxS: Array) -> Array:
        """Softmax attention of T queries over S keys under a bool mask, projected to (B, T, d)."""
        scale = self.query_scalar ** -0.5 if self.query_scalar else None
        # chosen by the platform the step is lowered for (a TPU compile on this CPU host
        # keeps jax's own): XLA:CPU the grouped layout, elsewhere jax's (cuDNN's on GPU)
        out_BxTxHxK = jax.lax.platform_dependent(
            q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_Bx1xTxS,
            cpu=lambda q, k, v, m: grouped_attention(q, k, v, m, scale),
            default=lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale))
        return jnp.einsum("bthk,hkd->btd", out_BxTxHxK, self.wo[...].astype(self.dtype))

    def __call__(self, x_BxTxD: Array, segment_ids_BxT: Array, positions_BxT: Array, local: Array | None = None
                 ) -> Array:
        q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = self.qkv(x_BxTxD, positions_BxT, local)
        mask = self.windowed(attention_mask(segment_ids_BxT), positions_BxT, positions_BxT, local)
        return self.attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask)

    def cached(self, x_BxTxD: Array, positions_BxT: Array, k_cache_BxSxGxK: Array, v_cache_BxSxGxK: Array,
               start: Array, mask_Bx1xTxS: Array, local: Array | None = None) -> tuple[Array, Array, Array]:
        """One decoding call: the T new tokens' keys / values go to cache slots [start, start + T),
        then their queries attend over all S slots where `mask` allows (the caller masks
        padding and future slots). Returns (output (B, T, d), k cache, v cache)."""
        q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = self.qkv(x_BxTxD, positions_BxT, local)
        at = (0, start, 0, 0)
        k_cache_BxSxGxK = jax.lax.dynamic_update_slice(k_cache_BxSxGxK, k_BxTxGxK.astype(k_cache_BxSxGxK.dtype), at)
        v_cache_BxSxGxK = jax.lax.dynamic_update_slice(v_cache_BxSxGxK, v_BxTxGxK.astype(v_cache_BxSxGxK.dtype), at)
        slots = jnp.arange(k_cache_BxSxGxK.shape[1], dtype=jnp.int32)
        mask_Bx1xTxS = self.windowed(mask_Bx1xTxS, start + jnp.arange(x_BxTxD.shape[1], dtype=jnp.int32), slots, local)
        out_BxTxD = self.attend(q_BxTxHxK, k_cache_BxSxGxK.astype(self.dtype), v_cache_BxSxGxK.astype(self.dtype),
                                mask_Bx1xTxS)
        return out_BxTxD, k_cache_BxSxGxK, v_cache_BxSxGxK

"""Multi-head causal self-attention with RoPE, grouped-query heads and packed segments."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity_jax.nn.layers import apply_rope, get_initializer, param

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


class Attention(nnx.Module):
    """Kernels: wq (d, H, K) ('embed', 'heads', None); wk, wv (d, G, K); wo (H, K, d)."""

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
    ):
        head_dim = d_model // num_heads
        init = get_initializer("lecun_normal")
        proj_in = lambda g: param(rngs, init, (d_model, g, head_dim), ("embed", "heads", None), param_dtype)  # noqa: E731
        self.wq = proj_in(num_heads)
        self.wk = proj_in(num_kv_heads)
        self.wv = proj_in(num_kv_heads)
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)
        self.wo = param(rngs, out_init, (num_heads, head_dim, d_model), ("heads", None, "embed"), param_dtype)
        self.rope_theta = rope_theta
        self.dtype = dtype

    def __call__(self, x_BxTxD: Array, segment_ids_BxT: Array, positions_BxT: Array) -> Array:
        x = x_BxTxD.astype(self.dtype)
        w = lambda v: v[...].astype(self.dtype)  # noqa: E731
        q_BxTxHxK = apply_rope(jnp.einsum("btd,dhk->bthk", x, w(self.wq)), positions_BxT, self.rope_theta)
        k_BxTxGxK = apply_rope(jnp.einsum("btd,dgk->btgk", x, w(self.wk)), positions_BxT, self.rope_theta)
        v_BxTxGxK = jnp.einsum("btd,dgk->btgk", x, w(self.wv))
        out_BxTxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask=attention_mask(segment_ids_BxT)
        )
        return jnp.einsum("bthk,hkd->btd", out_BxTxHxK, w(self.wo))

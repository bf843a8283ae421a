"""Decoder-only Transformer LM (pre-norm RMSNorm, RoPE, MHA/GQA, instrumented FFN).

    tokens → embed → L × [x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x))] → RMSNorm → logits

The FFN of every block owns the neuron decomposition (see `ffn.py`); `LM.apply` returns
what the FFNs sowed stacked over layers, and `LM.__call__` can skip whole blocks
(progressive layer dropping, Zhang & He 2020).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.attention import Attention
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.nn.layers import RMSNorm, param

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model hyper-parameters; `validate()` names the first problem in one sentence."""

    vocab_size: int = 259
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 0  # 0 = same as num_heads (no grouping)
    d_ff: int = 512
    activation: str = "relu"
    fat_eps: float = 0.0
    tie_embeddings: bool = True
    mlp_init: str = "lecun_normal"
    init_std: float = 0.02
    rope_theta: float = 10000.0
    dtype: str = "float32"  # compute dtype; params are always float32

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_heads < 0:
            raise ValueError(f"model.num_kv_heads must be >= 0, got {self.num_kv_heads}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must divide model.d_model={self.d_model}"
            )
        if (self.d_model // self.num_heads) % 2:
            raise ValueError("model.d_model / model.num_heads must be even for rotary embeddings")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"model.num_kv_heads={self.kv_heads} must divide model.num_heads={self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        return self

    def non_embedding_params(self) -> int:
        """Parameters excluding the embedding / LM head (as scaling-law papers count)."""
        n_mats = 3 if ACTIVATIONS[self.activation].gated else 2
        head_dim = self.d_model // self.num_heads
        attn = self.d_model * head_dim * (2 * self.num_heads + 2 * self.kv_heads)
        return self.num_layers * (attn + n_mats * self.d_model * self.d_ff + 2 * self.d_model)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = DTYPES[cfg.dtype]
        self.attn_norm = RMSNorm(cfg.d_model, dtype=dtype)
        self.attn = Attention(
            cfg.d_model, cfg.num_heads, cfg.kv_heads, rngs=rngs, rope_theta=cfg.rope_theta, dtype=dtype
        )
        self.ffn_norm = RMSNorm(cfg.d_model, dtype=dtype)
        self.ffn = FFN(
            cfg.d_model, cfg.d_ff, cfg.activation, rngs=rngs, fat_eps=cfg.fat_eps,
            kernel_init=cfg.mlp_init, init_std=cfg.init_std, dtype=dtype,
        )

    def __call__(self, x, segment_ids, positions, sp: Sparsify, record):
        x = x + self.attn(self.attn_norm(x), segment_ids, positions)
        return x + self.ffn(self.ffn_norm(x), sp, record)


class LM(nnx.Module):
    """The language model. Call with int tokens (B, T); returns float32 logits (B, T, V).

    Layers are a Python list (unrolled under jit): simple and exact; compile time grows
    with depth, which is fine for the model sizes this library trains on CPU and small
    pods.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg.validate()
        d = cfg.d_model
        self.embed = param(rngs, nnx.initializers.normal(d**-0.5), (cfg.vocab_size, d), ("vocab", "embed"))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(d, dtype=DTYPES[cfg.dtype])
        if not cfg.tie_embeddings:
            self.head = param(rngs, nnx.initializers.lecun_normal(), (d, cfg.vocab_size), ("embed", "vocab"))

    def __call__(
        self,
        tokens_BxT: Array,
        segment_ids_BxT: Array | None = None,
        positions_BxT: Array | None = None,
        *,
        sparsify: Sparsify = Sparsify(),
        record: str | tuple[str, ...] | None = None,
        layer_keep: Array | None = None,
        layer_scale: Array | None = None,
    ) -> Array:
        """Logits (B, T, V); one `sparsify` (sliced per layer) and the `record` flag go
        down to the FFN of every block.

        `layer_keep` (L,) bool skips whole blocks (progressive layer dropping, Zhang & He
        2020): a dropped block is the identity `x ↦ x`, run under `lax.cond` so its FLOPs
        (forward and backward) are really skipped; None (eval) runs every block.
        `layer_scale` (L,) float (PLD: 1/p_i, p_i the keep probability) scales a kept
        block's residual update, x ↦ x + (block(x) − x)·scale_i, so the training forward
        equals the eval forward (all blocks, unscaled) in expectation (Zhang & He 2020;
        DeepSpeed's PLD).
        """
        b, t = tokens_BxT.shape
        if segment_ids_BxT is None:
            segment_ids_BxT = jnp.ones((b, t), jnp.int32)
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        dtype = DTYPES[self.cfg.dtype]
        x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dtype)
        n = self.cfg.num_layers
        if (layer_keep is not None or layer_scale is not None) and record is not None:
            raise ValueError("layer_keep (dropped layers) cannot be combined with recording activations")
        for i, block in enumerate(self.blocks):
            run = functools.partial(block, segment_ids=segment_ids_BxT, positions=positions_BxT,
                                    sp=sparsify.for_layer(i, n), record=record)
            if layer_keep is None:
                x_BxTxD = run(x_BxTxD)
            else:  # a dropped block is the identity; lax.cond skips its FLOPs
                kept = run
                if layer_scale is not None:
                    def kept(x, run=run, scale=layer_scale[i]):
                        return x + ((run(x) - x) * scale).astype(x.dtype)
                x_BxTxD = jax.lax.cond(layer_keep[i], kept, lambda x: x, x_BxTxD)
        x_BxTxD = self.final_norm(x_BxTxD)
        head_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.head[...]
        return jnp.einsum("btd,dv->btv", x_BxTxD, head_DxV.astype(dtype)).astype(jnp.float32)

    def w_out(self) -> Array:
        """All FFN output kernels stacked: (L, F, d)."""
        return jnp.stack([blk.ffn.w_out[...] for blk in self.blocks])

    def apply(self, tokens_BxT: Array, segment_ids_BxT: Array | None = None, positions_BxT: Array | None = None,
              *, sparsify: Sparsify = Sparsify(), record: str | tuple[str, ...] | None = None,
              layer_keep: Array | None = None, layer_scale: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """Forward pass returning (logits, records); records are what the FFNs sowed,
        stacked over layers: `mask` bool (L, B, T, F), `scores` (L, B, T, F) and/or the
        FFN inputs `inputs` (L, B, T, d), as `record` asks (`nn.ffn.recorded`).
        `layer_keep` (L,) bool drops blocks, `layer_scale` (L,) scales the kept blocks'
        updates (see `__call__`; needs record=None)."""
        if record is None:
            return self(tokens_BxT, segment_ids_BxT, positions_BxT, sparsify=sparsify, layer_keep=layer_keep,
                        layer_scale=layer_scale), {}
        logits, inter = nnx.capture(self, nnx.Intermediate)(
            tokens_BxT, segment_ids_BxT, positions_BxT, sparsify=sparsify, record=record, layer_keep=layer_keep,
            layer_scale=layer_scale,
        )
        out: dict[str, list] = {}
        for i in range(self.cfg.num_layers):
            for name, var in inter["blocks"][i]["ffn"].items():
                out.setdefault(name, []).append(var.get_value()[-1])
        return logits, {k: jnp.stack(v) for k, v in out.items()}

"""Decoder-only Transformer LM (pre-norm RMSNorm, RoPE, MHA/GQA, instrumented FFN).

    tokens → embed → L × [x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x))] → RMSNorm → logits

The FFN of every block owns the neuron decomposition (see `ffn.py`). `LM.forward` is the
one forward of training, evaluation, recording, prefill and KV-cache decoding (with a
pluggable FFN call), over one layer loop: the blocks run unrolled or scanned over stacked
parameters (`model.scan_layers`), each rematerialised by `model.remat` (`nn/stack.py`),
the KV cache (stacked on the same leading layer axis) and the records riding along as
per-layer inputs and outputs. `model(tokens)` (logits) and `model.apply` (logits,
records) are thin wrappers; blocks can be skipped (progressive layer dropping).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity_jax.nn import stack
from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.attention import Attention, KVCache, cache_positions, decode_mask
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.nn.layers import RMSNorm, constrain, param

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_SCALINGS = ("none", "linear", "llama3")
EMBED_AXES = ("activation_batch", "activation_length", "activation_embed")


class FFNHook(NamedTuple):
    """Replaces every block's FFN call (the gathered decode FFNs of `infer/`):
    `fn(ffn_module, h_BxTxD, xs_i=..., static_i=...) -> (y_BxTxD, outputs dict)` gets
    layer i's slice of `xs` (a pytree of arrays stacked (L, ...): tables, thresholds,
    predictor weights), scanned with the layers, and `static[i]` (hashable, e.g. its
    budgets; layers whose statics differ run one by one). Its outputs join the records."""

    fn: Callable
    xs: Any
    static: tuple


class Output(NamedTuple):
    """What `LM.forward` returns."""

    logits: Array | None  # (B, T, V) float32; None with head=False
    cache: KVCache | None  # the updated cache when decoding
    records: dict[str, Array]  # stacked over layers (L, ...): what the FFNs sowed and the ffn hook returned
    hidden: Array | None = None  # with head=False: the last block's output (B, T, d), before the final norm


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
    dtype: str = "float32"  # compute dtype
    remat: str = "none"  # per-block rematerialisation: none | dots | ffn | full (nn.stack.REMAT_POLICIES)
    scan_layers: bool = False  # blocks' params stacked on a leading 'layers' axis, run under lax.scan
    # Options of pretrained families (`sparsity_jax.hf`); the defaults are this project's models.
    param_dtype: str = "float32"  # parameters (an imported bf16 checkpoint keeps bfloat16)
    head_dim: int = 0  # K; 0 = d_model // num_heads
    qkv_bias: bool = False  # biases on q, k, v (Qwen2)
    qk_norm: bool = False  # RMSNorm of each head's q and k before RoPE (Qwen3)
    norm_eps: float = 1e-6  # every RMSNorm's eps
    norm_offset: float = 0.0  # RMSNorm scale (offset + w): 1 is Gemma's (1 + w)
    rope_scaling: str = "none"  # none | linear | llama3 (`nn.layers.rope_frequencies`)
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_len: int = 8192  # llama3
    sliding_window: int = 0  # > 0: each query sees that many latest positions (Mistral; Gemma 3: local layers only)
    layer_types: str = ""  # one letter a layer, L local (sliding window) / G global; "" = every layer alike (Gemma 3)
    rope_local_theta: float = 0.0  # RoPE base of the L layers, unscaled (0 = rope_theta) (Gemma 3)
    query_scalar: float = 0.0  # attention scores × 1/√this (0 = head_dim) (Gemma's query_pre_attn_scalar)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before the residual (Gemma 2/3)
    embed_scale: float = 1.0  # embeddings × this in the compute dtype (Gemma √d, MiniCPM scale_emb)
    residual_scale: float = 1.0  # every block's two updates × this (MiniCPM scale_depth / √L)
    logit_scale: float = 1.0  # final hidden state × this before the head (MiniCPM dim_model_base / d)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def heads_dim(self) -> int:
        """K, the width of one attention head."""
        return self.head_dim or self.d_model // self.num_heads

    @property
    def rope(self) -> tuple:
        """The RoPE scaling as `Attention` takes it."""
        return (self.rope_scaling, self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
                self.rope_original_max_len)

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_heads < 0:
            raise ValueError(f"model.num_kv_heads must be >= 0, got {self.num_kv_heads}")
        if self.head_dim < 0:
            raise ValueError(f"model.head_dim must be >= 0, got {self.head_dim}")
        if not self.head_dim and self.d_model % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must divide model.d_model={self.d_model}"
            )
        if self.heads_dim % 2:
            raise ValueError("model.head_dim (d_model / num_heads when 0) must be even for rotary embeddings")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"model.num_kv_heads={self.kv_heads} must divide model.num_heads={self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(DTYPES)}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"model.rope_scaling={self.rope_scaling!r} is not one of {', '.join(ROPE_SCALINGS)}")
        if self.norm_eps <= 0 or self.sliding_window < 0 or self.rope_factor <= 0:
            raise ValueError("model.norm_eps and model.rope_factor must be positive and model.sliding_window >= 0")
        if self.layer_types and (len(self.layer_types) != self.num_layers or set(self.layer_types) - set("LG")):
            raise ValueError(f"model.layer_types={self.layer_types!r} must give one letter L (local) or G (global) "
                             f"for each of the model.num_layers={self.num_layers} layers")
        if "L" in self.layer_types and not self.sliding_window:
            raise ValueError("model.layer_types has local (L) layers, so model.sliding_window must be positive")
        if self.rope_local_theta < 0 or self.query_scalar < 0:
            raise ValueError("model.rope_local_theta and model.query_scalar must be >= 0 (0: the default)")
        if self.remat not in stack.REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r} is not one of {', '.join(stack.REMAT_POLICIES)}")
        return self

    def non_embedding_params(self) -> int:
        """Parameters excluding the embedding / LM head (as scaling-law papers count)."""
        n_mats = 3 if ACTIVATIONS[self.activation].gated else 2
        head_dim = self.heads_dim
        attn = self.d_model * head_dim * (2 * self.num_heads + 2 * self.kv_heads)
        norms = (4 if self.post_norms else 2) * self.d_model
        return self.num_layers * (attn + n_mats * self.d_model * self.d_ff + norms)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        norm = lambda: RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype, param_dtype=pdtype,  # noqa: E731
                               offset=cfg.norm_offset)
        self.attn_norm = norm()
        self.attn = Attention(
            cfg.d_model, cfg.num_heads, cfg.kv_heads, rngs=rngs, rope_theta=cfg.rope_theta, dtype=dtype,
            param_dtype=pdtype, head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps, rope_scaling=cfg.rope, window=cfg.sliding_window,
            local_theta=(cfg.rope_local_theta or cfg.rope_theta) if cfg.layer_types else 0.0,
            query_scalar=cfg.query_scalar, norm_offset=cfg.norm_offset,
        )
        self.ffn_norm = norm()
        if cfg.post_norms:
            self.post_attn_norm, self.post_ffn_norm = norm(), norm()
        self.ffn = FFN(
            cfg.d_model, cfg.d_ff, cfg.activation, rngs=rngs, fat_eps=cfg.fat_eps,
            kernel_init=cfg.mlp_init, init_std=cfg.init_std, dtype=dtype, param_dtype=pdtype,
        )
        self.residual_scale, self.post_norms = cfg.residual_scale, cfg.post_norms

    def _scaled(self, u_BxTxD: Array, dtype) -> Array:
        """A block update in the residual's dtype, × residual_scale (MiniCPM) when not 1."""
        u_BxTxD = u_BxTxD.astype(dtype)
        return u_BxTxD if self.residual_scale == 1.0 else u_BxTxD * jnp.asarray(self.residual_scale, dtype)

    def __call__(self, x_BxTxD, segment_ids, positions, sp: Sparsify, record, *, kv=None, ffn=None, local=None):
        """x ↦ x + Attn(norm x); x ↦ x + FFN(norm x) (with `post_norms`, each update normed
        again: x + norm(Attn(norm x))): returns (x, kv', ffn extra).

        `local` (a bool scalar, per layer) picks local or global attention (Gemma 3's
        `layer_types`); `kv` = (k cache, v cache, start, mask) runs the attention against a KV cache
        (`Attention.cached`; kv' is the updated pair, else None); `ffn(ffn_module, h_BxTxD)
        -> (y_BxTxD, extra)` replaces the FFN call (the gathered decode FFNs of `infer/`;
        extra is theirs, else None)."""
        x_BxTxD = constrain(x_BxTxD, EMBED_AXES)
        h_BxTxD = self.attn_norm(x_BxTxD)
        if kv is None:
            a_BxTxD, kv_out = self.attn(h_BxTxD, segment_ids, positions, local), None
        else:
            a_BxTxD, k, v = self.attn.cached(h_BxTxD, positions, *kv, local=local)
            kv_out = (k, v)
        if self.post_norms:
            a_BxTxD = self.post_attn_norm(a_BxTxD)
        x_BxTxD = x_BxTxD + self._scaled(a_BxTxD, x_BxTxD.dtype)
        h_BxTxD = self.ffn_norm(x_BxTxD)
        if ffn is None:
            y_BxTxD, extra = self.ffn(h_BxTxD, sp, record), None
        else:
            y_BxTxD, extra = ffn(self.ffn, h_BxTxD)
        if self.post_norms:
            y_BxTxD = self.post_ffn_norm(y_BxTxD)
        return x_BxTxD + self._scaled(y_BxTxD, x_BxTxD.dtype), kv_out, extra


class LM(nnx.Module):
    """The language model. Call with int tokens (B, T); returns float32 logits (B, T, V).

    Layers are a Python list (unrolled under jit: compile time grows with depth) or, with
    `scan_layers`, one block of stacked parameters run under `lax.scan` (`nn/stack.py`).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg.validate()
        d, pdtype = cfg.d_model, DTYPES[cfg.param_dtype]
        self.embed = param(rngs, nnx.initializers.normal(d**-0.5), (cfg.vocab_size, d), ("vocab", "embed"), pdtype)
        blocks = [Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)]  # the same draws either way
        self.blocks = stack.stack(blocks) if cfg.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=DTYPES[cfg.dtype], param_dtype=pdtype,
                                  offset=cfg.norm_offset)
        if not cfg.tie_embeddings:
            self.head = param(rngs, nnx.initializers.lecun_normal(), (d, cfg.vocab_size), ("embed", "vocab"), pdtype)

    def __call__(self, tokens_BxT: Array, *args, **kwargs) -> Array:
        """`forward(...).logits`: float32 logits (B, T, V) (the same arguments)."""
        return self.forward(tokens_BxT, *args, **kwargs).logits

    def apply(self, tokens_BxT: Array, *args, **kwargs) -> tuple[Array, dict[str, Array]]:
        """`forward(...)`'s (logits, records) (the same arguments): training, evaluation
        and the searches read the records."""
        out = self.forward(tokens_BxT, *args, **kwargs)
        return out.logits, out.records

    def forward(
        self,
        tokens_BxT: Array,
        segment_ids_BxT: Array | None = None,
        positions_BxT: Array | None = None,
        *,
        sparsify: Sparsify = Sparsify(),
        record: str | tuple[str, ...] | None = None,
        layer_keep: Array | None = None,
        layer_scale: Array | None = None,
        cache: KVCache | None = None,
        start: Array | None = None,
        ffn: FFNHook | None = None,
        head: bool = True,
    ) -> Output:
        """The one forward of training, evaluation, recording, prefill and KV-cache decoding:
        `Output(logits (B, T, V) float32, the updated cache or None, records)`.

        One layer loop (`stack.run`: unrolled, or one `lax.scan` over the stacked blocks,
        rematerialised by `cfg.remat`) carries x; each layer gets its slice of the
        per-layer inputs (sparsity settings, PLD draws, the cache, the `ffn` hook's
        arrays, Gemma 3's local / global flag) and returns its records and cache, stacked (L, ...).

        One `sparsify` (sliced per layer) and the `record` flag go down to the FFN of every
        block; the records are what the FFNs sowed: `mask` bool (L, B, T, F), `scores`
        (L, B, T, F) and/or `inputs` (L, B, T, d), as `record` asks (`nn.ffn.recorded`),
        plus what an `ffn` hook returns. `cache` (`KVCache`, stacked (L, B, S, G, K)) with
        `start` (int32 scalar) decodes: the T tokens are written at cache slots
        [start, start + T), their positions and attention mask come from the cache's left
        padding (`cache_positions`, `decode_mask`; segment ids and positions must then be
        None). `ffn` (`FFNHook`) replaces every block's FFN call (the gathered sparse FFNs
        of `infer/`). `head=False` returns the last block's output as `hidden` instead of
        the logits, for a caller that runs the head (`logits`) itself, e.g. in chunks.

        `layer_keep` (L,) bool skips whole blocks (progressive layer dropping, Zhang & He
        2020): a dropped block is the identity `x ↦ x`, run under `lax.cond` so its FLOPs
        (forward and backward) are really skipped; None (eval) runs every block.
        `layer_scale` (L,) float (PLD: 1/p_i, p_i the keep probability) scales a kept
        block's residual update, x ↦ x + (block(x) − x)·scale_i, so the training forward
        equals the eval forward (all blocks, unscaled) in expectation (Zhang & He 2020;
        DeepSpeed's PLD).
        """
        t = tokens_BxT.shape[1]
        dropping = layer_keep is not None or layer_scale is not None
        if dropping and (record is not None or cache is not None or ffn is not None):
            raise ValueError("layer_keep / layer_scale (dropped layers) cannot be combined with recording "
                             "activations, a KV cache or an ffn hook")
        mask = None
        if cache is not None:
            if segment_ids_BxT is not None or positions_BxT is not None or start is None:
                raise ValueError("decoding with a cache needs `start` and takes no segment ids or positions")
            positions_BxT = cache_positions(cache.pad_B, start, t)
            mask = decode_mask(cache.pad_B, start, t, cache.length)
        segment_ids_BxT, positions_BxT = self._segments(tokens_BxT, segment_ids_BxT, positions_BxT)
        n = self.cfg.num_layers

        def one(block, x, xs_i, settings_i):
            sp_i, hook_static = settings_i
            keep_i, scale_i = xs_i.get("keep"), xs_i.get("scale")
            kv = None if cache is None else (*xs_i["cache"], start, mask)
            hook = None if ffn is None else functools.partial(ffn.fn, xs_i=xs_i["ffn"], static_i=hook_static.value)

            def kept(x):
                call = nnx.capture(block(), nnx.Intermediate)
                (y, kv_out, extra), sown = call(x, segment_ids_BxT, positions_BxT, sp_i, record, kv=kv, ffn=hook,
                                                local=xs_i.get("local"))
                y = y if scale_i is None else x + ((y - x) * scale_i).astype(x.dtype)
                records = {name: v[-1] for name, v in nnx.to_pure_dict(sown).get("ffn", {}).items()}
                return y, (records | (extra or {}), kv_out)

            if keep_i is None:
                return kept(x)
            return jax.lax.cond(keep_i, kept, lambda x: (x, ({}, None)), x)

        local = jnp.asarray([c == "L" for c in self.cfg.layer_types]) if self.cfg.layer_types else None
        xs = {k: v for k, v in (("keep", layer_keep), ("scale", layer_scale), ("ffn", None if ffn is None else ffn.xs),
                                ("cache", None if cache is None else (cache.k, cache.v)), ("local", local))
              if v is not None}
        statics = (None,) * n if ffn is None else ffn.static
        settings = [(sparsify.for_layer(i, n), stack.Static(statics[i])) for i in range(n)]
        x_BxTxD, (records, kv) = stack.run(self.blocks, self.embed_tokens(tokens_BxT), one, settings, xs,
                                           remat=self.cfg.remat)
        cache = None if cache is None else KVCache(*kv, cache.pad_B)
        if not head:
            return Output(None, cache, records, x_BxTxD)
        return Output(self.logits(x_BxTxD), cache, records)

    @staticmethod
    def _segments(tokens_BxT, segment_ids_BxT, positions_BxT) -> tuple[Array, Array]:
        """Segment ids and positions (B, T), defaulting to one unpacked sequence per row."""
        b, t = tokens_BxT.shape
        if segment_ids_BxT is None:
            segment_ids_BxT = jnp.ones((b, t), jnp.int32)
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        return segment_ids_BxT, positions_BxT

    def embed_tokens(self, tokens_BxT: Array) -> Array:
        """The input embeddings (B, T, d) in the compute dtype (× embed_scale, rounded to
        that dtype as Gemma's √d, when not 1)."""
        dtype = DTYPES[self.cfg.dtype]
        x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dtype)
        return x_BxTxD if self.cfg.embed_scale == 1.0 else x_BxTxD * jnp.asarray(self.cfg.embed_scale, dtype)

    def logits(self, x_BxTxD: Array) -> Array:
        """Final norm and the (tied or untied) head: float32 logits (B, T, V); the normed
        state × logit_scale first when not 1 (MiniCPM)."""
        dtype = DTYPES[self.cfg.dtype]
        x_BxTxD = self.final_norm(x_BxTxD)
        if self.cfg.logit_scale != 1.0:
            x_BxTxD = x_BxTxD * jnp.asarray(self.cfg.logit_scale, dtype)
        head_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.head[...]
        return jnp.einsum("btd,dv->btv", x_BxTxD, head_DxV.astype(dtype)).astype(jnp.float32)

    def ffns(self) -> FFN:
        """Every block's FFN as one module of kernels stacked (L, ...) (a scanned model's own)."""
        return self.blocks.ffn if self.cfg.scan_layers else stack.stack([blk.ffn for blk in self.blocks])

    def w_out(self) -> Array:
        """All FFN output kernels stacked: (L, F, d)."""
        return self.ffns().w_out[...]

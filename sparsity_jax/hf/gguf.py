"""A llama.cpp GGUF file (architecture llama or gemma3) as a `weights.Source`: its
metadata read as an HF `config.json` dict (so `hf.config.model_config` checks it like any
import), its tensors dequantized and renamed to HF names by one table per architecture,
its tokenizer rebuilt (`gguf_vocab.py`).

GGUF stores a tensor's dims in ggml order (ne: fastest first); the `gguf` reader reverses
them, so every array is (out, in) as in PyTorch. llama.cpp's converter interleaves the
rows of q and k per head for its RoPE (`permute` in convert_hf_to_gguf.py: rows (h, 2,
K/2) → (h, K/2, 2)); we undo it as transformers' GGUF loader does. For gemma3 it stores
every RMSNorm weight as 1 + w (and permutes nothing); we subtract the 1 in float32, as
transformers does. Gemma 3 settings the metadata lacks are llama.cpp's and transformers'
defaults: local RoPE base 10000, every 6th layer global, query_pre_attn_scalar = the head
width (transformers' 256 for every Gemma 3 but the 27B). The `gguf` package
(numpy only, the optional `gguf` extra) is imported here; `hf/load.py` imports this
module only for a `.gguf` path, so `sparsity_jax.hf` works without it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.hf import gguf_vocab
from sparsity_jax.hf.config import model_config

try:
    import gguf
except ModuleNotFoundError:  # the optional extra: one sentence instead of a traceback
    raise UserError("reading a .gguf file needs the gguf package; pip install 'sparsity-jax[gguf]'.") from None

T = gguf.GGMLQuantizationType
TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
# llama.cpp's tensor name ↔ HF name ({i}: the layer), and how to undo llama.cpp's change
LLAMA = (
    ("token_embd.weight", "model.embed_tokens.weight", "copy"),
    ("output_norm.weight", "model.norm.weight", "copy"),
    ("output.weight", "lm_head.weight", "copy"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", "copy"),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "rope_q"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "rope_k"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", "copy"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", "copy"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "copy"),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", "copy"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", "copy"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", "copy"),
)
GEMMA3 = (
    ("token_embd.weight", "model.embed_tokens.weight", "copy"),
    ("output_norm.weight", "model.norm.weight", "norm"),
    ("output.weight", "lm_head.weight", "copy"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", "norm"),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "copy"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "copy"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", "copy"),
    ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight", "norm"),
    ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight", "norm"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", "copy"),
    ("blk.{i}.post_attention_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "norm"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight", "norm"),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", "copy"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", "copy"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", "copy"),
    ("blk.{i}.post_ffw_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight", "norm"),
)
NAMES = {"llama": LLAMA, "gemma3": GEMMA3}
ARCHITECTURES = tuple(NAMES)
# `{arch}.` metadata key → HF config key (required ones first)
REQUIRED = {"embedding_length": "hidden_size", "block_count": "num_hidden_layers",
            "attention.head_count": "num_attention_heads", "feed_forward_length": "intermediate_size",
            "attention.layer_norm_rms_epsilon": "rms_norm_eps"}
OPTIONAL = {"attention.head_count_kv": "num_key_value_heads", "rope.freq_base": "rope_theta",
            "attention.key_length": "head_dim", "vocab_size": "vocab_size",
            "attention.sliding_window": "sliding_window"}
FAMILY = {"llama": {"model_type": "llama", "hidden_act": "silu"},
          "gemma3": {"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh"}}


def unpermute(x: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q / k rows (heads·K, d), interleaved per head for its RoPE, in HF's
    rotate-half order: rows (h, K/2, 2) → (h, 2, K/2)."""
    return x.reshape(heads, -1, 2, x.shape[-1]).swapaxes(1, 2).reshape(x.shape)


def shape(t) -> tuple[int, ...]:
    """A reader tensor's numpy shape: its ggml dims (ne) reversed, so (out, in)."""
    return tuple(int(n) for n in reversed(t.shape.tolist()))


def read_metadata(reader) -> dict:
    """{key: value} of every metadata field (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def hf_config(meta: dict, names: set[str], file: str) -> dict:
    """The HF `config.json` dict a llama / gemma3 GGUF's metadata describes; UserError for
    a key that changes the math and that the importer does not model."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(f"{file} holds a {arch!r} model; this importer reads GGUF architecture "
                        f"{', '.join(ARCHITECTURES)} (import other families from their Hugging Face checkpoint).")
    missing = [k for k in REQUIRED if f"{arch}.{k}" not in meta]
    if missing:
        raise UserError(f"{file} has no {arch}.{missing[0]} in its metadata; it is not a complete {arch} GGUF.")
    hf = {**FAMILY[arch], "tie_word_embeddings": "output.weight" not in names}
    hf.update({v: meta[f"{arch}.{k}"] for k, v in {**REQUIRED, **OPTIONAL}.items() if f"{arch}.{k}" in meta})
    hf.setdefault("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    refused = {f"{arch}.expert_count": 0, f"{arch}.rope.dimension_count": head_dim,
               f"{arch}.attention.value_length": head_dim, "split.count": 1, f"{arch}.attn_logit_softcapping": 0,
               f"{arch}.final_logit_softcapping": 0}
    for key, neutral in refused.items():
        if meta.get(key, neutral) != neutral:
            raise UserError(f"{file} sets {key}={meta[key]!r}, which the {arch} importer does not model; only "
                            f"single-file dense {arch} checkpoints with full-width RoPE load (merge a split GGUF "
                            "with llama-gguf-split --merge).")
    if arch == "gemma3":
        hf.update(query_pre_attn_scalar=head_dim, rope_local_base_freq=10000.0, sliding_window_pattern=6)
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear" and f"{arch}.rope.scaling.factor" in meta:
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    elif kind != "none":
        raise UserError(f"{file} sets {arch}.rope.scaling.type={kind!r}, which this importer does not model; "
                        "supported: none, linear (with its rope.scaling.factor).")
    return hf


def _reader(path: Path):
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .gguf file.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, OverflowError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable GGUF file ({reason}); it is truncated or corrupt, so "
                        "re-download or re-convert it.") from None


def rename(name: str, to_hf: bool, arch: str = "llama") -> tuple[str, str] | None:
    """(the name on the other side of `NAMES[arch]`, how) of a GGUF (`to_hf`) or HF tensor name."""
    for row in NAMES[arch]:
        src, dst = row[:2] if to_hf else row[1::-1]
        m = re.fullmatch(re.escape(src).replace(r"\{i\}", r"(\d+)"), name)
        if m:
            return dst.format(i=m.group(1) if m.groups() else None), row[2]
    return None


class GGUFSource:
    """The tensors of a GGUF file under HF names, dequantized to float32 one at a time."""

    config = "GGUF metadata"

    def __init__(self, path: Path, reader, meta: dict, hf: dict):
        self.path, self.meta, self.arch = path, meta, meta["general.architecture"]
        self.heads = {"rope_q": hf["num_attention_heads"],
                      "rope_k": hf.get("num_key_value_heads") or hf["num_attention_heads"]}
        self.by_hf: dict[str, tuple] = {}  # HF name → (reader tensor, how)
        for t in reader.tensors:
            mapped = rename(t.name, True, self.arch)
            if mapped is None:
                what = " (Llama 3.1+ RoPE frequency factors)" if t.name == "rope_freqs.weight" else ""
                raise UserError(f"{path.name} holds tensor {t.name!r}{what}, which the {self.arch} importer does not "
                                f"model; only plain {self.arch} checkpoints load exactly.")
            layer = re.match(r"blk\.(\d+)\.", t.name)
            if layer and int(layer.group(1)) >= hf["num_hidden_layers"]:
                raise UserError(f"{path.name} holds tensor {t.name!r}, but its metadata says "
                                f"{hf['num_hidden_layers']} layers; the file is inconsistent, so re-convert it.")
            if t.tensor_type not in TYPES:
                raise UserError(f"tensor {t.name!r} in {path.name} is stored as {t.tensor_type.name}, which this "
                                f"importer does not dequantize; supported: {', '.join(x.name for x in TYPES)}.")
            self.by_hf[mapped[0]] = (t, mapped[1])

    def stored(self, name: str) -> str:
        return rename(name, False, self.arch)[0]

    def file(self, name: str) -> str:
        return self.path.name

    def dtype(self) -> str:
        return "float32"

    def shapes(self) -> dict[str, tuple]:
        return {name: shape(t) for name, (t, _) in self.by_hf.items()}

    def tensors(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            t, how = self.by_hf[name]
            x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape(t))
            if how == "norm":  # llama.cpp's Gemma norms are 1 + w
                x = x.astype(np.float32) - np.float32(1)
            yield name, (x if how in ("copy", "norm") else unpermute(x, self.heads[how]))

    def tokenizer_files(self) -> dict[str, bytes]:
        return gguf_vocab.tokenizer_files(self.meta, self.path.name)


def open_gguf(path: Path) -> tuple[dict, GGUFSource]:
    """(the HF config dict, the tensor source) of a llama / gemma3 GGUF file; UserError for
    a file that is not one, is truncated, or holds what the importer does not model."""
    reader = _reader(path)
    meta = read_metadata(reader)
    hf = hf_config(meta, {t.name for t in reader.tensors}, path.name)
    model_config(hf)
    return hf, GGUFSource(path, reader, meta, hf)

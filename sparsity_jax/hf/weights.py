"""Hugging Face tensor names ↔ this project's parameters, and reading them one at a time.

HF (PyTorch) stores a linear layer as (out, in); ours are Flax kernels (in, out), with
the attention heads as their own axis: q_proj (H·K, d) ↔ wq (d, H, K), o_proj (d, H·K)
↔ wo (H, K, d), gate / up / down ↔ w_gate / w_in (d, F), w_out (F, d). Heads stay in
their stored order (head h is rows h·K … h·K + K − 1, grouped query heads as stored), and
RoPE is the rotate-half form of HF's Llama over those K features, so no permutation is
needed. A `Source` (an HF directory's safetensors, or a GGUF file: `hf/gguf.py`) hands
over HF-named tensors in the HF layout one at a time (memory-mapped); they are reshaped
as views and handed to `jax.make_array_from_callback`, which copies only each device's
shard onto its device: the host never holds more than one tensor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
from safetensors import safe_open

from sparsity_jax.errors import UserError
from sparsity_jax.nn.model import ModelConfig

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
STORED = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def hf_names(cfg: ModelConfig) -> dict[tuple, tuple[str, str]]:
    """{our parameter path: (HF tensor name, transform)}; transforms: copy, T (transpose),
    q / kv (out, in) → (d, heads, K), o (d, H·K) → (H, K, d), bias_q / bias_kv (heads·K,) → (heads, K)."""
    out = {("embed",): ("model.embed_tokens.weight", "copy"), ("final_norm", "scale"): ("model.norm.weight", "copy")}
    if not cfg.tie_embeddings:
        out[("head",)] = ("lm_head.weight", "T")
    for i in range(cfg.num_layers):
        p, b = f"model.layers.{i}.", ("blocks", i)
        out[b + ("attn_norm", "scale")] = (p + "input_layernorm.weight", "copy")
        if cfg.post_norms:  # Gemma 2/3: post_attention_layernorm is the norm after attention
            out[b + ("post_attn_norm", "scale")] = (p + "post_attention_layernorm.weight", "copy")
            out[b + ("ffn_norm", "scale")] = (p + "pre_feedforward_layernorm.weight", "copy")
            out[b + ("post_ffn_norm", "scale")] = (p + "post_feedforward_layernorm.weight", "copy")
        else:
            out[b + ("ffn_norm", "scale")] = (p + "post_attention_layernorm.weight", "copy")
        for ours, theirs, how in (("wq", "q_proj", "q"), ("wk", "k_proj", "kv"), ("wv", "v_proj", "kv"),
                                  ("wo", "o_proj", "o")):
            out[b + ("attn", ours)] = (p + f"self_attn.{theirs}.weight", how)
        if cfg.qkv_bias:
            for ours, theirs, how in (("bq", "q_proj", "bias_q"), ("bk", "k_proj", "bias_kv"),
                                      ("bv", "v_proj", "bias_kv")):
                out[b + ("attn", ours)] = (p + f"self_attn.{theirs}.bias", how)
        if cfg.qk_norm:
            out[b + ("attn", "q_norm", "scale")] = (p + "self_attn.q_norm.weight", "copy")
            out[b + ("attn", "k_norm", "scale")] = (p + "self_attn.k_norm.weight", "copy")
        out[b + ("ffn", "w_gate")] = (p + "mlp.gate_proj.weight", "T")
        out[b + ("ffn", "w_in")] = (p + "mlp.up_proj.weight", "T")
        out[b + ("ffn", "w_out")] = (p + "mlp.down_proj.weight", "T")
    return out


def to_ours(x: np.ndarray, how: str, cfg: ModelConfig) -> np.ndarray:
    """An HF tensor in our layout (a view where numpy allows)."""
    k, d = cfg.heads_dim, cfg.d_model
    if how == "copy":
        return x
    if how == "T":
        return x.T
    if how in ("q", "kv"):
        return x.T.reshape(d, -1, k)
    if how == "o":
        return x.T.reshape(-1, k, d)
    return x.reshape(-1, k)  # bias_q, bias_kv


def to_theirs(x: np.ndarray, how: str) -> np.ndarray:
    """Our parameter in the HF layout (the inverse of `to_ours`)."""
    if how == "copy":
        return x
    if how == "T":
        return x.T
    if how in ("q", "kv"):
        return x.reshape(x.shape[0], -1).T
    if how == "o":
        return x.reshape(-1, x.shape[-1]).T
    return x.reshape(-1)


def expected_shape(shape: tuple, how: str) -> tuple:
    """The HF shape of a parameter of our `shape`."""
    if how in ("T", "q", "kv"):
        return (int(np.prod(shape[1:])), shape[0]) if how != "T" else tuple(reversed(shape))
    if how == "o":
        return (shape[-1], int(np.prod(shape[:-1])))
    if how.startswith("bias"):
        return (int(np.prod(shape)),)
    return tuple(shape)


def shard_files(path: Path) -> dict[str, Path]:
    """{tensor name: the .safetensors file holding it} of an HF directory."""
    if (path / INDEX).is_file():
        index = json.loads((path / INDEX).read_text())
        return {name: path / file for name, file in index["weight_map"].items()}
    if (path / SINGLE).is_file():
        with safe_open(str(path / SINGLE), framework="numpy") as f:
            return {name: path / SINGLE for name in f.keys()}
    raise UserError(f"{path} has neither {SINGLE} nor {INDEX}; pass a Hugging Face model directory with "
                    "safetensors weights.")


class Source(Protocol):
    """A checkpoint's tensors under their HF names, in the HF layout: an HF directory
    (`Safetensors`) or a GGUF file (`hf.gguf.GGUFSource`). For messages, `config` names what
    states the model's shape, `stored(name)` the tensor as the file calls it and `file(name)`
    the file holding it."""

    path: Path
    config: str

    def stored(self, name: str) -> str: ...

    def file(self, name: str) -> str: ...

    def dtype(self) -> str: ...

    def shapes(self) -> dict[str, tuple]: ...

    def tensors(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]: ...


class Safetensors:
    """An HF directory's `*.safetensors` (one file or sharded with an index), read
    memory-mapped one tensor at a time."""

    config = "config.json"

    def __init__(self, path: Path):
        self.path, self.files = path, shard_files(path)

    def stored(self, name: str) -> str:
        return name

    def file(self, name: str) -> str:
        return self.files[name].name

    def _by_file(self, names) -> dict[Path, list[str]]:
        out: dict[Path, list[str]] = {}
        for name in names:
            out.setdefault(self.files[name], []).append(name)
        return out

    def shapes(self) -> dict[str, tuple]:
        out = {}
        for file, names in self._by_file(self.files).items():
            with safe_open(str(file), framework="numpy") as f:
                out.update({name: tuple(f.get_slice(name).get_shape()) for name in names})
        return out

    def dtype(self) -> str:
        """The dtype the checkpoint stores its embedding in (float32, bfloat16, float16)."""
        name = "model.embed_tokens.weight"
        if name not in self.files:
            raise UserError(f"tensor {name!r} is missing; the checkpoint does not match its config.json.")
        with safe_open(str(self.files[name]), framework="numpy") as f:
            kind = f.get_slice(name).get_dtype()
        if kind not in STORED:
            raise UserError(f"tensors stored as {kind} are not supported; convert the checkpoint to bf16 or fp32.")
        return STORED[kind]

    def tensors(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        for file, group in self._by_file(names).items():
            with safe_open(str(file), framework="numpy") as f:
                for name in group:
                    yield name, f.get_tensor(name)


def ignored(name: str, cfg: ModelConfig) -> bool:
    """Tensors a checkpoint may hold that the model does not read, as transformers ignores
    them: RoPE's `inv_freq` buffers (recomputed from the config) and a tied model's stored
    `lm_head.weight` (the embedding is the head)."""
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and name == "lm_head.weight")


def check_tensors(source: Source, cfg: ModelConfig, shapes: dict[tuple, tuple]) -> None:
    """From the source's headers only: every tensor the model needs exists with the right
    shape and the checkpoint holds no tensor it would drop (`ignored` aside); else one
    UserError that lists every missing, mis-shaped and unexpected tensor."""
    found = source.shapes()
    problems, used = [], set()
    for ours, (name, how) in hf_names(cfg).items():
        used.add(name)
        want = expected_shape(shapes[ours], how)
        if name not in found:
            problems.append(f"tensor {source.stored(name)!r} is missing")
        elif found[name] != want:
            problems.append(f"tensor {source.stored(name)!r} in {source.file(name)} has shape {found[name]}, but "
                            f"{source.config} implies {want}")
    problems += [f"tensor {source.stored(name)!r} is not part of the model" for name in found
                 if name not in used and not ignored(name, cfg)]
    if problems:
        raise UserError(f"{source.path} does not match its {source.config} ({len(problems)} "
                        f"problem{'s' * (len(problems) > 1)}): {'; '.join(problems)}; fix the config or the weights.")


def read(source: Source, cfg: ModelConfig, place: Callable[[tuple, np.ndarray], None]) -> None:
    """Reads each tensor once (one at a time), converts it to our layout and passes it to
    `place(our path, array)`, which puts it on the devices."""
    ours = {name: (path, how) for path, (name, how) in hf_names(cfg).items()}
    for name, x in source.tensors(list(ours)):
        path, how = ours[name]
        place(path, to_ours(x, how, cfg))


def flat(tree: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """(path, leaf) of a nested dict whose list-like levels have int keys."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def set_path(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value

"""`load_pretrained`: a local Hugging Face checkpoint or GGUF file as this project's `LM`.

    model, cfg = load_pretrained("path/to/Llama-3.2-1B")            # bf16 stays bf16
    model, cfg = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")  # dequantized to fp32
    logits, rec = model.apply(tokens, record="scores")               # every FFN mode works

The parameters are created abstractly (nothing allocated), then each tensor is read once
from the memory-mapped file (`weights.Source`) and placed straight onto its training
sharding (`devices.sharding.param_shardings`: the same logical-axis rules as training).
Imported models scan their layers (`model.scan_layers`) unless told otherwise: the
per-layer tensors are placed first, then stacked on the devices one parameter at a time.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.hf import weights
from sparsity_jax.hf.config import model_config
from sparsity_jax.nn.model import DTYPES, LM, ModelConfig
from sparsity_jax.devices import sharding as shd


def read_config(path) -> dict:
    """The parsed config.json of an HF directory; UserError when there is none."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json; pass a local Hugging Face model directory or a .gguf file.")
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path / 'config.json'} is not valid JSON ({e.msg}); fix or re-download it.") from None


def open_source(path) -> tuple[dict, weights.Source]:
    """(the HF config dict, the tensor source) of an HF directory or a `.gguf` file, its
    family and keys checked before the weights are touched."""
    path = Path(path)
    if path.suffix == ".gguf":
        from sparsity_jax.hf import gguf  # the optional `gguf` package, only for GGUF files

        return gguf.open_gguf(path)
    hf = read_config(path)
    model_config(hf)  # refuse the family / activation / keys before touching the weights
    return hf, weights.Safetensors(path)


def inspect(path, dtype: str | None = None) -> tuple[ModelConfig, weights.Source]:
    """(our ModelConfig, its tensor source) of an HF directory or a GGUF file, every tensor
    checked against the config (headers only, nothing loaded); `dtype` None keeps the
    stored dtype (GGUF: float32, what its types dequantize to)."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    hf, source = open_source(path)
    cfg = model_config(hf, dtype or source.dtype())
    weights.check_tensors(source, cfg, shapes(cfg))
    return cfg, source


def abstract(cfg: ModelConfig):
    """(graphdef, abstract params State) of the model of `cfg` (nothing allocated)."""
    return nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def shapes(cfg: ModelConfig) -> dict[tuple, tuple]:
    return {p: tuple(v.shape) for p, v in weights.flat(nnx.to_pure_dict(abstract(cfg)[1]))}


def one_device_mesh():
    return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def load_params(source: weights.Source, cfg: ModelConfig, mesh) -> dict:
    """The parameters as a pure dict of global arrays on `mesh` with the training
    shardings, read one tensor at a time (the layout of `cfg.scan_layers`)."""
    per_layer = dataclasses.replace(cfg, scan_layers=False)
    _, state = abstract(per_layer)
    sh = dict(weights.flat(shd.param_shardings(state, mesh)))
    pure = nnx.to_pure_dict(state)
    dtype = DTYPES[cfg.param_dtype]

    def place(path: tuple, x: np.ndarray) -> None:
        def shard(index):
            return np.ascontiguousarray(x[index]).astype(dtype, copy=False)

        weights.set_path(pure, path, jax.make_array_from_callback(x.shape, sh[path], shard))

    weights.read(source, per_layer, place)
    return stacked(pure, cfg, mesh) if cfg.scan_layers else pure


def _stack(*layers):
    return jnp.stack(layers)


def stacked(pure: dict, cfg: ModelConfig, mesh) -> dict:
    """`pure` (per-layer blocks {i: ...}) with its blocks stacked (L, ...) on their scanned
    shardings, one parameter at a time (each per-layer copy dropped once stacked)."""
    layers, out = pure.pop("blocks"), {}
    for path, sh in weights.flat(shd.param_shardings(abstract(cfg)[1], mesh)["blocks"]):
        parts = []
        for i in range(cfg.num_layers):
            node = layers[i]
            for k in path[:-1]:
                node = node[k]
            parts.append(node.pop(path[-1]))
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jax.jit(_stack, out_shardings=sh)(*parts)
        del parts
    return {**pure, "blocks": out}


def load_pretrained(path, *, dtype: str | None = None, mesh=None, scan_layers: bool = True) -> tuple[LM, ModelConfig]:
    """(LM, ModelConfig) of a local HF directory (config.json + model.safetensors or a
    sharded model.safetensors.index.json) or a llama / gemma3 `.gguf` file. `dtype`
    ("float32" | "bfloat16") is the
    parameter and compute dtype (None: as stored, so bf16 stays bf16); `mesh` (data,
    fsdp, tensor; None: one device) places every parameter with its training sharding;
    `scan_layers` stacks the blocks for one `lax.scan` (False: a Python loop of blocks).
    Bad input is a UserError naming the config key or tensor."""
    cfg, source = inspect(path, dtype)
    cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
    params = load_params(source, cfg, mesh if mesh is not None else one_device_mesh())
    graphdef, state = abstract(cfg)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), cfg

"""A Hugging Face checkpoint or GGUF file as a run's parts, and a run's checkpoint back to HF.

An import (`workflows.importing.import_checkpoint`) writes what a trained run holds:
`checkpoints/0/` (an Orbax checkpoint of the parameters, its metadata carrying the
settings), `config.json` (the settings, `import_settings`), an empty `metrics.jsonl` (no
training steps) and `tokenizer/` (`tokenizer_files`: the model's tokenizer files, or those
a GGUF's metadata describes, with data.vocab = hf), so `evaluate`, `cett`, `ppl`,
`predictor`, `affinity`, `generate` and `ssd` open it as any trained run (`ssd --structure
moefy` MoEfies it post hoc when imported with --config.method.name=ssd
--config.method.num_experts=N).
`export_run` writes a gated model's parameters as `model.safetensors` + `config.json`
(+ the tokenizer files) that transformers loads. Both check everything before they write
and never write into an existing directory.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from sparsity_jax.errors import UserError
from sparsity_jax.hf import weights
from sparsity_jax.hf.config import hf_config
from sparsity_jax.runtime.block_stacking import convert_blocks

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json")


def import_settings(base, cfg, tokenizer: str | None):
    """`base` settings with the imported model and, when it has one, its tokenizer."""
    data = base.data
    if tokenizer:
        data = dataclasses.replace(data, vocab="hf", tokenizer=f"tokenizer/{tokenizer}")
    return base.replace(model=cfg, data=data)


def tokenizer_files(src: Path, source) -> dict[str, bytes]:
    """{name: contents} of the tokenizer files an import writes: an HF directory's own, or
    those built from a GGUF file's metadata."""
    if src.suffix == ".gguf":
        return source.tokenizer_files()
    return {name: (src / name).read_bytes() for name in TOKENIZER_FILES if (src / name).is_file()}


def export_run(params: dict, cfg, out, *, tokenizer_dir=None, log=print) -> Path:
    """Writes `params` (a pure dict, our layout) of model `cfg` as an HF directory `out`."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; export into a new directory (nothing is ever overwritten).")
    config = hf_config(cfg, cfg.param_dtype)
    params = convert_blocks(params, stacked=False)  # a scanned model's blocks, one per layer
    tensors = {}
    for path, (name, how) in weights.hf_names(cfg).items():
        x = params
        for k in path:
            x = x[k]
        tensors[name] = np.ascontiguousarray(weights.to_theirs(np.asarray(jax.device_get(x)), how))
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    act = config.get("hidden_act") or config["hidden_activation"]
    log(f"exported {config['model_type']} ({act}) with {len(tensors)} tensors → {out}")
    return out

"""A Hugging Face checkpoint or GGUF file as a run directory, and a run's checkpoint back to HF.

`import_run` writes what a trained run holds: `checkpoints/0/` (an Orbax checkpoint of
the parameters, its metadata carrying the settings), `config.json` (the settings), an
empty `metrics.jsonl` (no training steps) and `tokenizer/` (the model's tokenizer files,
or those a GGUF's metadata describes, with data.vocab = hf), so `evaluate`, `cett`, `ppl`,
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

from sparsity_jax.devices import sharding as shd
from sparsity_jax.errors import UserError
from sparsity_jax.hf import weights
from sparsity_jax.hf.config import hf_config
from sparsity_jax.hf.load import inspect, load_params
from sparsity_jax.runtime.block_stacking import convert_blocks
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.workdir import Workdir, write_json, write_text

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


def import_run(src, workdir, base_settings, *, dtype: str | None = None, scan_layers: bool = True,
               log=print) -> dict:
    """Imports the HF directory or GGUF file `src` into the new run directory `workdir`
    with the settings `base_settings` (their model replaced by the checkpoint's, its blocks
    scanned unless `scan_layers` is False); returns a summary. Everything is read and
    checked before anything is written."""
    src, wd = Path(src), Workdir(workdir)
    if wd.root.exists():
        raise UserError(f"{wd} already exists; import into a new --workdir (nothing is ever overwritten).")
    cfg, source = inspect(src, dtype)
    cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
    tok_files = tokenizer_files(src, source)
    tokenizer = next((n for n in ("tokenizer.json", "tokenizer.model") if n in tok_files), None)
    st = import_settings(base_settings, cfg, tokenizer)
    m = st.mesh
    try:
        mesh = shd.make_mesh(m.data, m.fsdp, m.tensor)
    except ValueError as e:
        raise UserError(f"{e}.") from None
    params = load_params(source, cfg, mesh)
    if tokenizer:
        wd.tokenizer.mkdir(parents=True, exist_ok=False)
        for name, data in tok_files.items():
            (wd.tokenizer / name).write_bytes(data)
    ckpt = Checkpointer(wd, keep=1, async_save=False)
    try:
        ckpt.save(0, {"params": params}, {"data_position": 0, "step": 0, "config": st.to_dict(),
                                          "method": {"method": "dense"}, "imported_from": str(src.resolve())})
    finally:
        ckpt.close()
    write_json(wd.config, st.to_dict())
    write_text(wd.metrics, "")  # a run with no training steps (`report` and `ssd` read the curves)
    n = sum(int(np.prod(x.shape)) for _, x in weights.flat(params))
    summary = {"workdir": str(wd), "from": str(src), "parameters": n, "dtype": cfg.param_dtype,
               "activation": cfg.activation, "tokenizer": tokenizer or "none (data.vocab unchanged)",
               "scan_layers": scan_layers}
    log(f"imported {src} → {wd}: {n:,} parameters ({cfg.param_dtype}), activation {cfg.activation}, tokenizer "
        f"{summary['tokenizer']}, layers {'scanned' if scan_layers else 'unrolled'}")
    return summary


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

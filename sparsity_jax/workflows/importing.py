"""A Hugging Face directory or GGUF file as a new run directory (`sparsity-jax import`;
`importing`, as `import` is Python's keyword; the way back is `export`): the checkpoint is
read and checked (`hf.load`), then `checkpoints/0/`, `config.json`, an empty
`metrics.jsonl` and `tokenizer/` are written, so every evaluation command opens the
directory as a trained run (`import_checkpoint` → `ImportedRun`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sparsity_jax.devices import sharding as shd
from sparsity_jax.errors import UserError
from sparsity_jax.hf import weights
from sparsity_jax.hf.load import inspect, load_params
from sparsity_jax.hf.run import import_settings, tokenizer_files
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.workdir import Workdir, write_json, write_text
from sparsity_jax.nn.model import ModelConfig
from sparsity_jax.settings import Settings


@dataclasses.dataclass(frozen=True)
class ImportedRun:
    """The run directory an import wrote: `settings` (their `model` the checkpoint's), the
    parameters' element and tensor counts, and the tokenizer file it took (None: none, so
    data.vocab is unchanged)."""

    workdir: str
    source: str  # the HF directory or .gguf file imported
    source_kind: str  # "hf" | "gguf"
    settings: Settings
    parameters: int  # elements over all tensors
    tensors: int
    tokenizer: str | None  # "tokenizer.json" | "tokenizer.model" | None

    @property
    def model(self) -> ModelConfig:
        return self.settings.model

    def to_json(self) -> dict:
        return {"workdir": self.workdir, "from": self.source, "source_kind": self.source_kind,
                "parameters": self.parameters, "tensors": self.tensors, "dtype": self.model.param_dtype,
                "activation": self.model.activation, "tokenizer": self.tokenizer or "none (data.vocab unchanged)",
                "scan_layers": self.model.scan_layers}


def import_checkpoint(src, workdir, base_settings: Settings, *, dtype: str | None = None,
                      scan_layers: bool = True) -> ImportedRun:
    """Imports the HF directory or GGUF file `src` into the new run directory `workdir` with
    the settings `base_settings` (their model replaced by the checkpoint's, its blocks
    scanned unless `scan_layers` is False; `dtype` None: as stored). Everything is read and
    checked before anything is written; an existing `workdir` is refused."""
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
    shapes = [x.shape for _, x in weights.flat(params)]
    return ImportedRun(str(wd), str(src), "gguf" if src.suffix == ".gguf" else "hf", st,
                       sum(int(np.prod(s)) for s in shapes), len(shapes), tokenizer)

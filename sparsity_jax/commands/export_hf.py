"""`sparsity-jax export`: a run's checkpoint (trained or imported) as a Hugging Face directory.

  sparsity-jax export --workdir RUN --hf OUT [--step N]

A gated model (swiglu, reglu, geglu, relu2glu, and the imported families) becomes
config.json + model.safetensors (+ the run's tokenizer files) that transformers loads;
a non-gated FFN has no stock transformers class and is refused. OUT must not exist.
"""
from __future__ import annotations

from pathlib import Path

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError
from sparsity_jax.hf.config import hf_config
from sparsity_jax.hf.run import export_run
from sparsity_jax.workflows.export import saved_model

TAKES_CONFIG = False


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's gated model as a Hugging Face directory")
    common.add_workdir(p)
    p.add_argument("--hf", required=True, help="the new Hugging Face directory to create")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def run(args) -> int:
    if Path(args.hf).exists():
        raise UserError(f"{args.hf} already exists; export into a new directory (nothing is ever overwritten).")
    cfg, params, wd = saved_model(args.workdir, args.step)
    hf_config(cfg, cfg.param_dtype)  # a non-gated FFN: one sentence, nothing written
    export_run(params, cfg, args.hf, tokenizer_dir=str(wd.tokenizer), log=common.log)
    return 0

"""`sparsity-jax train`: train a model in a workdir, resuming from its latest checkpoint.

  sparsity-jax train [--config FILE] [--workdir DIR] [--init-from RUN] [--config.a.b=V ...] [multi-process flags]
  sparsity-jax train --config FILE --dry-run [--dry-run-device v5p] [--topology v5p-8] [--tune]

--topology compiles for a TPU slice with no TPU attached (the `tpu` extra: libtpu) and
adds the compiler's estimated step time, tokens/s and MFU; --tune compiles remat policy ×
grad_accum and prints, last, the fastest configuration that fits as --config.* flags.

--init-from RUN starts a fresh run from RUN's parameters (e.g. `sparsity-jax import`'s):
its model section (and pretrained tokenizer) comes from RUN, the other sections from
--config, and `--config.*` overrides apply on top (`--config.model.activation=reglu`
ReLU-fies a SwiGLU model, as ReluLLaMA / ProSparse did); the shapes must match.
"""
from __future__ import annotations

import os
from pathlib import Path

from sparsity_jax import settings
from sparsity_jax.commands import common
from sparsity_jax.devices.hardware import CHIPS
from sparsity_jax.methods import make_method
from sparsity_jax.report.summary import print_summary
from sparsity_jax.train.dry_run import run_dry
from sparsity_jax.train.init_from import check_init_shapes, init_settings
from sparsity_jax.train.trainer import train
from sparsity_jax.train.tune import run_tune

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (resumes from the workdir's latest checkpoint)")
    common.add_config(p)
    p.add_argument("--workdir", default=None, help="run directory (default: workdirs/<config name>)")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start from the parameters of RUN's latest checkpoint (e.g. an imported model) and its "
                        "model settings (and tokenizer); --config.model.* change them, the shapes must stay")
    common.add_distributed(p)
    p.add_argument("--dry-run", action="store_true",
                   help="compile the train step on abstract inputs and print its memory, FLOPs and compile time "
                        "per device; reads no data and writes nothing")
    p.add_argument("--dry-run-device", default=None, help="check the dry run against this chip's memory: "
                   f"{' | '.join(c.name for c in CHIPS)} (default: the devices' own reported memory)")
    p.add_argument("--topology", default=None, help="dry run: compile for this TPU slice, a Cloud TPU name (v5p-8, "
                   "v5litepod-16, v4-32, v6e-8) or libtpu's (v5p:2x2x1); needs the tpu extra (libtpu)")
    p.add_argument("--tune", action="store_true", help="dry run over remat policy × grad_accum: print the table and "
                   "the fastest configuration that fits (compiler estimates), as --config.* flags")


def run(args) -> int:
    path = args.config or settings.DEFAULT_CONFIG
    if getattr(args, "init_from", None):  # RUN's model (and tokenizer), the command's overrides on top
        st = init_settings(path, common.overrides(args), args.init_from)
        check_init_shapes(st, args.init_from)
    else:
        st = settings.load(path, common.overrides(args))  # bad input fails before any process waits for peers
    if args.tune:
        return run_tune(st, make_method, path, device=args.dry_run_device, topology=args.topology)
    if args.dry_run or args.dry_run_device or args.topology:
        return run_dry(st, make_method, path, device=args.dry_run_device, topology=args.topology)
    common.init_distributed(args)
    summary = train(st, args.workdir or os.path.join("workdirs", Path(path.partition(":")[0]).stem), make_method,
                    init_from=getattr(args, "init_from", None))
    if common.is_main():
        print_summary(summary)
    return 0

"""`sparsity-jax report`: one report per run, RUN/report/index.html and report.md, with every
measurement the workdir holds (training curves, activation ratio per layer, W&A hidden-unit
use, CETT / PPL-p% and Pareto curves, the scaling fit, SSD, predictivity, affinity), and
the training-loss curves of other runs beside it.

  sparsity-jax report --workdir DIR [--compare DIR ...]
"""
from __future__ import annotations

import json
import os

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError

TAKES_CONFIG = False


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="the run's report: index.html and report.md with every measurement it has")
    common.add_workdir(p, help="a training run's directory")
    p.add_argument("--compare", nargs="*", default=[], help="other workdirs whose loss curves go on one figure")
    common.add_distributed(p)


def _runs(workdir: str, others: list[str]) -> dict[str, str]:
    """{run name: workdir}; UserError for a missing directory or two runs of one name."""
    runs = {}
    for w in [workdir, *others]:
        if not os.path.isdir(w):
            raise UserError(f"workdir {w} does not exist; pass the directories of training runs.")
        name = os.path.basename(os.path.normpath(w))
        if name in runs:
            raise UserError(f"{runs[name]} and {w} have the same name {name!r} on the figure; rename or link one.")
        runs[name] = w
    return runs


def run(args) -> int:
    from sparsity_jax.report.layer_patterns import compare_losses
    from sparsity_jax.report.run_report import run_report

    runs = _runs(args.workdir, args.compare)  # before anything is written
    common.init_distributed(args)
    if not common.is_main():  # the report reads files; process 0 writes it
        return 0
    out_dir = os.path.join(args.workdir, "report")
    sections, paths = run_report(args.workdir, out_dir)
    for s in sections:
        print(f"  {s.title}: " + (f"no data yet ({s.missing})" if s.missing else ", ".join(s.images) or "tables"))
    print(f"wrote {paths[0]} and {paths[1]}")
    if args.compare:
        from sparsity_jax.settings import from_saved

        cfg_path = os.path.join(args.workdir, "config.json")
        at = from_saved(json.load(open(cfg_path))).unit_mask.at_step if os.path.isfile(cfg_path) else None
        finals = compare_losses(runs, os.path.join(out_dir, "loss_comparison.png"), at or None)
        print(f"wrote {out_dir}/loss_comparison.png; final training loss: "
              + ", ".join(f"{k} {v:.4f}" for k, v in finals.items()))
    return 0

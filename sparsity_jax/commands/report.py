"""`sparsity-jax report`: one report per run, RUN/report/index.html and report.md, with every
measurement the workdir holds (training curves, activation ratio per layer, W&A hidden-unit
use, CETT / PPL-p% and Pareto curves, the scaling fit, SSD, predictivity, affinity), and
the training-loss curves of other runs beside it.

  sparsity-jax report --workdir DIR [--compare DIR ...]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError
from sparsity_jax.runtime.workdir import Workdir, read_json
from sparsity_jax.settings import from_saved

TAKES_CONFIG = False


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="the run's report: index.html and report.md with every measurement it has")
    common.add_workdir(p, help="a training run's directory")
    p.add_argument("--compare", nargs="*", default=[], help="other workdirs whose loss curves go on one figure")
    common.add_distributed(p)


def _runs(workdir: str, others: list[str]) -> dict[str, Workdir]:
    """{run name: workdir}; UserError for a missing directory or two runs of one name."""
    runs = {}
    for w in [workdir, *others]:
        wd = Workdir(w)
        if not wd.exists():
            raise UserError(f"workdir {w} does not exist; pass the directories of training runs.")
        if wd.name in runs:
            raise UserError(f"{runs[wd.name]} and {w} have the same name {wd.name!r} on the figure; rename or link one.")
        runs[wd.name] = wd
    return runs


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.layer_patterns import compare_losses
    from sparsity_jax.report.run_report import run_report

    runs = _runs(args.workdir, args.compare)  # before anything is written
    common.init_distributed(args)
    if not common.is_main():  # the report reads files; process 0 writes it
        return 0
    wd = runs[Workdir(args.workdir).name]
    sections, paths = run_report(wd)
    for s in sections:
        print(f"  {s.title}: " + (f"no data yet ({s.missing})" if s.missing else ", ".join(s.images) or "tables"))
    print(f"wrote {paths[0]} and {paths[1]}")
    if args.compare:
        at = from_saved(read_json(wd.config)).unit_mask.at_step if wd.config.is_file() else None
        png = wd.report_file("loss_comparison.png")
        finals = compare_losses(runs, png, at or None)
        print(f"wrote {png}; final training loss: " + ", ".join(f"{k} {v:.4f}" for k, v in finals.items()))
    return 0

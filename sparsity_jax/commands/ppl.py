"""`sparsity-jax ppl`: PPL-p% sparsity of every checkpoint with the stabilising strategy
(Sparsing Law App. B, C), top-k / FAT-ε Pareto curves and neuron statistics
(`workflows.ppl_sweep.ppl_of_run`); writes WORKDIR/report/ppl.json and PNGs.

  sparsity-jax ppl --workdir DIR --ppl-p 1,5,10 [--last 5] [--tol 1e-3] [--topk 256,128]
                   [--fat-eps 0.1,0.2] [--pareto topk,fat|none] [--output-dir DIR] [--eval-batches N]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.devices.timing import TIMINGS
from sparsity_jax.errors import comma_list
from sparsity_jax.search.sweep import PARETO_METHODS
from sparsity_jax.workflows.ppl_sweep import check_sweep, ppl_of_run

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("ppl", help="PPL-p%% sparsity of every checkpoint, baselines, statistics, figures")
    common.add_workdir(p)
    p.add_argument("--ppl-p", required=True, help="comma-separated p values in percent, e.g. 1,5,10")
    p.add_argument("--last", type=int, default=5, help="checkpoints searched jointly (stabilising strategy)")
    p.add_argument("--tol", type=float, default=1e-3, help="CETT tolerance of the search")
    p.add_argument("--topk", default=None, help="top-k baseline k values (default F/2 … F/32)")
    p.add_argument("--fat-eps", default=None, help="FAT-eps baseline values (default: |a| quantiles)")
    p.add_argument("--pareto", default=",".join(PARETO_METHODS),
                   help=f"baselines swept for the Pareto curves: some of {','.join(PARETO_METHODS)}, or none")
    p.add_argument("--output-dir", default=None, help="default: WORKDIR/report")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.cett_report import write_ppl_report

    ps = common.ppl_ps(args.ppl_p)
    topk = comma_list(args.topk, int, "--topk") if args.topk else None
    fat_eps = comma_list(args.fat_eps, float, "--fat-eps") if args.fat_eps else None
    options = dict(last=args.last, tol=args.tol, topk=topk,
                   pareto_methods=[] if args.pareto == "none" else comma_list(args.pareto, str, "--pareto"))

    common.init_distributed(args)
    wd = common.open_trained(args, lambda settings, steps: check_sweep(settings, **options))
    try:
        result = ppl_of_run(wd, ps, fat_eps=fat_eps, log=common.log, **options)
    finally:
        wd.close()
    common.log(TIMINGS.line())
    if common.is_main():
        common.log("wrote " + ", ".join(write_ppl_report(result, args.output_dir or wd.workdir.report)))
    return 0

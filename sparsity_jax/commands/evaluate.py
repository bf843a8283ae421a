"""`sparsity-jax evaluate`: every checkpoint of a workdir (default output WORKDIR/eval.json):
validation loss, perplexity, per-layer activation ratio (a ≠ 0: CETT 0), training tokens
passed, and the activation ratio at PPL-p% (default p = 1, the stabilised CETT of Sparsing
Law App. B, from the PPL-p% sweep of `sparsity-jax ppl` on the same validation batches):
the points `sparsity-jax scaling` fits (`workflows.evaluate_run`).

  sparsity-jax evaluate --workdir DIR [--eval-batches N | --text FILE] [--ppl-p 1,5 | --ppl-p ''] [--output FILE]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.workflows.evaluation import evaluate_run

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate every checkpoint in a workdir")
    common.add_workdir(p)
    common.add_config(p, what="config file instead of the run's own (default: the config saved with the run)")
    common.add_eval_batches(p)
    p.add_argument("--ppl-p", default="1", help="PPL-p%% activation ratio of every checkpoint, e.g. 1,5,10; "
                                                "'' skips the PPL-p%% search")
    p.add_argument("--output", default=None, help="JSON path (default: WORKDIR/eval.json)")
    common.add_distributed(p)


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.cett_report import write_ppl_report

    ps = common.ppl_ps(args.ppl_p) if args.ppl_p.strip() else ()  # before any work
    common.init_distributed(args)
    wd = common.open_trained(args)
    try:
        out = evaluate_run(wd, ps, log=common.log)
        output = args.output or wd.workdir.eval_json
        common.write_json(output, out.to_json())
        common.log(f"wrote {output}")
        if out.sweep is not None and common.is_main():  # the PPL-p% sweep's own report, as `ppl` writes it
            common.log("wrote " + ", ".join(write_ppl_report(out.sweep, wd.workdir.report)))
    finally:
        wd.close()
    return 0

"""`sparsity-jax ppl`: PPL-p% sparsity of every checkpoint with the stabilising strategy
(Sparsing Law App. B, C), top-k / FAT-ε Pareto curves and neuron statistics; writes
WORKDIR/report/ppl.json and PNGs.

  sparsity-jax ppl --workdir DIR --ppl-p 1,5,10 [--last 5] [--tol 1e-3] [--topk 256,128]
                   [--fat-eps 0.1,0.2] [--output-dir DIR] [--eval-batches N]
"""
from __future__ import annotations

import os

import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("ppl", help="PPL-p%% sparsity of every checkpoint, baselines, statistics, figures")
    common.add_workdir(p)
    p.add_argument("--ppl-p", required=True, help="comma-separated p values in percent, e.g. 1,5,10")
    p.add_argument("--last", type=int, default=5, help="checkpoints searched jointly (stabilising strategy)")
    p.add_argument("--tol", type=float, default=1e-3, help="CETT tolerance of the search")
    p.add_argument("--topk", default=None, help="top-k baseline k values (default F/2 … F/32)")
    p.add_argument("--fat-eps", default=None, help="FAT-eps baseline values (default: |a| quantiles)")
    p.add_argument("--output-dir", default=None, help="default: WORKDIR/report")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def check_ps(text: str) -> list[float]:
    """The p values of --ppl-p, each a positive percentage."""
    from sparsity_jax.search.ppl import check_p

    ps = comma_list(text, float, "--ppl-p")
    for p in ps:
        check_p(p)
    return ps


def sweep(wd, ps: list[float], *, last: int = 5, tol: float = 1e-3, topk=None, fat_eps=None,
          output_dir: str | None = None) -> dict:
    """The App. B sweep of an opened workdir (`train.workdir.Workdir`); writes the report."""
    from sparsity_jax.report.cett_report import write_ppl_report
    from sparsity_jax.search.sweep import stabilised_sweep

    if topk is not None and not all(0 < k <= wd.run.model_cfg.d_ff for k in topk):
        raise UserError(f"Pass --topk values between 1 and d_ff = {wd.run.model_cfg.d_ff}; got {topk}.")
    common.log(f"PPL-p% for p = {ps} on {len(wd.steps)} checkpoints of {wd.path}")
    t = wd.settings.train
    result = stabilised_sweep(
        wd.run.graphdef, wd.steps, lambda s: wd.restore(s)[0]["params"], wd.val, ps,
        tokens_per_step=t.global_batch_size * t.seq_len, warmup_steps=wd.settings.optimizer.warmup_steps,
        last=last, tol=tol, topk=topk, fat_eps=fat_eps, vocab_size=wd.run.model_cfg.vocab_size, log=common.log)
    from sparsity_jax.runtime.trained import real_tokens

    out_dir = output_dir or os.path.join(wd.path, "report")
    tokens = real_tokens(wd.val)  # on every process: the batches are global arrays
    if common.is_main():
        meta = {"workdir": os.path.abspath(wd.path), "ppl_p": ps, "tol": tol, "last": last,
                "validation_tokens": tokens}
        common.log("wrote " + ", ".join(write_ppl_report(result, out_dir, meta)))
    return result


def run(args) -> int:
    ps = check_ps(args.ppl_p)
    if args.last <= 0 or not 0 < args.tol < 1:
        raise UserError(f"Pass --last > 0 and 0 < --tol < 1; got last={args.last}, tol={args.tol}.")
    topk = comma_list(args.topk, int, "--topk") if args.topk else None
    fat_eps = comma_list(args.fat_eps, float, "--fat-eps") if args.fat_eps else None

    def check(settings, steps):
        if topk is not None and not all(0 < k <= settings.model.d_ff for k in topk):
            raise UserError(f"Pass --topk values between 1 and d_ff = {settings.model.d_ff}; got {topk}.")

    common.init_distributed(args)
    wd = common.open_trained(args, check)
    try:
        sweep(wd, ps, last=args.last, tol=args.tol, topk=topk, fat_eps=fat_eps, output_dir=args.output_dir)
    finally:
        wd.close()
    return 0

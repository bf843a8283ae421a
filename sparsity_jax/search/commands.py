"""`sparsity-jax cett` and `sparsity-jax ppl`: threshold search on a trained run's workdir.

  sparsity-jax cett --workdir DIR --cett 0.2 [--step N] [--output FILE] [--eval-batches N]
  sparsity-jax ppl  --workdir DIR --ppl-p 1,5,10 [--last 5] [--tol 1e-3]
                    [--topk 256,128] [--fat-eps 0.1,0.2] [--output-dir DIR] [--eval-batches N]

The run's config comes from the latest checkpoint's metadata (as `evaluate` does); the
validation batches are the run's (`train.eval_batches`, or --eval-batches).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.train.logger import log_print


def add_commands(subparsers) -> None:
    """Registers the `cett` and `ppl` subcommands on an argparse subparsers object."""
    c = subparsers.add_parser("cett", help="per-layer thresholds for a target CETT on one checkpoint")
    c.add_argument("--workdir", required=True)
    c.add_argument("--cett", type=float, required=True, help="target CETT in [0, 1], e.g. 0.2")
    c.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    c.add_argument("--output", default=None, help="JSON path (default: WORKDIR/cett.json)")
    c.add_argument("--eval-batches", type=int, default=None)
    p = subparsers.add_parser("ppl", help="PPL-p%% sparsity of every checkpoint, baselines, statistics, figures")
    p.add_argument("--workdir", required=True)
    p.add_argument("--ppl-p", required=True, help="comma-separated p values in percent, e.g. 1,5,10")
    p.add_argument("--last", type=int, default=5, help="checkpoints searched jointly (stabilising strategy)")
    p.add_argument("--tol", type=float, default=1e-3, help="CETT tolerance of the search")
    p.add_argument("--topk", default=None, help="top-k baseline k values (default F/2 … F/32)")
    p.add_argument("--fat-eps", default=None, help="FAT-eps baseline values (default: |a| quantiles)")
    p.add_argument("--output-dir", default=None, help="default: WORKDIR/report")
    p.add_argument("--eval-batches", type=int, default=None)


def run_command(args) -> int:
    """Runs `cett` or `ppl` from parsed arguments; returns the exit status."""
    if args.command == "cett":
        cett_workdir(args.workdir, args.cett, step=args.step, output=args.output, eval_batches=args.eval_batches)
    else:
        ppl_workdir(args.workdir, args.ppl_p, last=args.last, tol=args.tol, topk=args.topk, fat_eps=args.fat_eps,
                    output_dir=args.output_dir, eval_batches=args.eval_batches)
    return 0


def load_workdir(workdir: str, eval_batches: int | None = None):
    """(checkpointer, run, validation batches, steps) of a trained workdir."""
    from sparsity_jax.train.evaluate import open_workdir

    return open_workdir(workdir, eval_batches=eval_batches)


def cett_workdir(workdir: str, cett: float, *, step: int | None = None, output: str | None = None,
                 eval_batches: int | None = None) -> dict:
    """Per-layer thresholds for `cett` on one checkpoint; writes JSON, prints a table."""
    from sparsity_jax.search.thresholds import check_cett, thresholds_for_cett

    check_cett(cett)
    ckpt, run, val, steps = load_workdir(workdir, eval_batches)
    step = steps[-1] if step is None else step
    if step not in steps:
        ckpt.close()
        raise UserError(f"no checkpoint at step {step} in {workdir}; available steps: {steps}")
    state, _ = ckpt.restore(step, run.abstract_state)
    ckpt.close()
    res = thresholds_for_cett((run.graphdef, state["params"]), val, cett)
    out = {"workdir": os.path.abspath(workdir), "step": step, "target_cett": cett,
           "threshold": res.threshold.tolist(), "cett": res.cett.tolist(), "sparsity": res.sparsity.tolist(),
           "activation_ratio": float(1 - res.sparsity.mean())}
    main = jax.process_index() == 0
    log_print(f"step {step}, target CETT {cett:g}\nlayer  threshold    CETT      sparsity", main)
    for i, (t, c, s) in enumerate(zip(res.threshold, res.cett, res.sparsity)):
        log_print(f"{i:5d}  {t:9.5f}  {c:8.5f}  {s:8.4f}", main)
    log_print(f"overall sparsity {res.sparsity.mean():.4f}, activation ratio {out['activation_ratio']:.4f}", main)
    output = output or os.path.join(workdir, "cett.json")
    if main:
        with open(output, "w") as f:
            json.dump(out, f, indent=2)
        log_print(f"wrote {output}", main)
    return out


def ppl_workdir(workdir: str, ppl_p, *, last: int = 5, tol: float = 1e-3, topk=None, fat_eps=None,
                output_dir: str | None = None, eval_batches: int | None = None) -> dict:
    """PPL-p% sparsity of every checkpoint (stabilising strategy), baselines, statistics;
    writes WORKDIR/report/ppl.json and PNGs. `ppl_p`: "1,5,10" or a list of numbers."""
    from sparsity_jax.report.cett_report import write_ppl_report
    from sparsity_jax.search.ppl import check_p
    from sparsity_jax.search.sweep import stabilised_sweep

    ps = comma_list(ppl_p, float, "--ppl-p") if isinstance(ppl_p, str) else [float(p) for p in ppl_p]
    for p in ps:
        check_p(p)
    if last <= 0 or not 0 < tol < 1:
        raise UserError(f"Pass --last > 0 and 0 < --tol < 1; got last={last}, tol={tol}.")
    topk = comma_list(topk, int, "--topk") if isinstance(topk, str) else topk
    fat_eps = comma_list(fat_eps, float, "--fat-eps") if isinstance(fat_eps, str) else fat_eps
    ckpt, run, val, steps = load_workdir(workdir, eval_batches)
    if topk is not None and not all(0 < k <= run.model_cfg.d_ff for k in topk):
        raise UserError(f"Pass --topk values between 1 and d_ff = {run.model_cfg.d_ff}; got {topk}.")
    main = jax.process_index() == 0
    log = lambda msg: log_print(msg, main)  # noqa: E731
    log(f"PPL-p% for p = {ps} on {len(steps)} checkpoints of {workdir}")
    t = run.cfg.train
    try:
        result = stabilised_sweep(
            run.graphdef, steps, lambda s: ckpt.restore(s, run.abstract_state)[0]["params"], val, ps,
            tokens_per_step=t.global_batch_size * t.seq_len, warmup_steps=int(run.cfg.optimizer.warmup_steps),
            last=last, tol=tol, topk=topk, fat_eps=fat_eps, vocab_size=run.model_cfg.vocab_size, log=log)
    finally:
        ckpt.close()
    out_dir = output_dir or os.path.join(workdir, "report")
    if main:
        meta = {"workdir": os.path.abspath(workdir), "ppl_p": ps, "tol": tol, "last": last,
                "validation_tokens": int(sum(float(np.sum(b["loss_weights"] > 0)) for b in val))}
        paths = write_ppl_report(result, out_dir, meta)
        log("wrote " + ", ".join(paths))
    return result

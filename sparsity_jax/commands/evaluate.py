"""`sparsity-jax evaluate`: every checkpoint of a workdir (default output WORKDIR/eval.json):
validation loss, perplexity, per-layer activation ratio (a ≠ 0: CETT 0), training tokens
passed, and the activation ratio at PPL-p% (default p = 1, the stabilised CETT of Sparsing
Law App. B, from the PPL-p% sweep of `sparsity-jax ppl` on the same validation batches):
the points `sparsity-jax scaling` fits.

  sparsity-jax evaluate --workdir DIR [--eval-batches N] [--ppl-p 1,5 | --ppl-p ''] [--output FILE]
"""
from __future__ import annotations

import os

import numpy as np

from sparsity_jax.commands import common, ppl
from sparsity_jax.runtime import names

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


def evaluate_checkpoints(wd) -> list[dict]:
    """Loss, accuracy, perplexity, per-layer activation ratio, training tokens and warm-up
    flag of every checkpoint of an opened workdir (`train.workdir.Workdir`)."""
    t = wd.settings.train
    rows = []
    for step in wd.steps:
        state, _ = wd.restore(step)
        m = wd.run.evaluate(state["params"], wd.val, wd.run.sparsify(state))
        row = {"step": step, "train_tokens": step * t.global_batch_size * t.seq_len,
               "warmup": step <= wd.settings.optimizer.warmup_steps,
               **{k: np.asarray(v).tolist() for k, v in m.items()}}
        row["activation_ratio_cett0"] = float(np.mean(row[names.ACTIVATION_RATIO]))
        rows.append(row)
        common.log(f"step {step}: loss {row[names.LOSS]:.4f}, perplexity {row[names.PERPLEXITY]:.3f}, activation "
                   f"ratio/layer {[round(r, 3) for r in row[names.ACTIVATION_RATIO]]}")
    return rows


def run(args) -> int:
    ps = ppl.check_ps(args.ppl_p) if args.ppl_p.strip() else None  # before any work
    common.init_distributed(args)
    wd = common.open_trained(args)
    try:
        from sparsity_jax.runtime.trained import real_tokens

        common.log(f"validation: {real_tokens(wd.val):,} real tokens in {len(wd.val)} batches")
        rows = evaluate_checkpoints(wd)
        out = {"workdir": os.path.abspath(args.workdir), "validation_tokens": int(rows[0][names.TOKENS]),
               "checkpoints": rows}
        if ps:
            sweep = ppl.sweep(wd, ps)
            by_step = {r["step"]: r for r in sweep["checkpoints"]}
            for row in rows:  # the activation ratio at each PPL-p% (1 − sparsity at the stabilised CETT)
                row["ppl_p"] = {f"{q['p']:g}": q["activation_ratio"] for q in by_step[row["step"]]["ppl_p"]}
            out["ppl_search"] = sweep["search"]
        output = args.output or os.path.join(args.workdir, "eval.json")
        common.write_json(output, out)
        common.log(f"wrote {output}")
    finally:
        wd.close()
    return 0

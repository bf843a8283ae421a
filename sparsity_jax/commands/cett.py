"""`sparsity-jax cett`: per-layer thresholds of one checkpoint for a target CETT, their
realised CETT and sparsity over all real validation tokens (ReLU² Wins §3).

  sparsity-jax cett --workdir DIR --cett 0.2 [--step N] [--output FILE] [--eval-batches N]
"""
from __future__ import annotations

import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.devices.timing import TIMINGS
from sparsity_jax.search.thresholds import check_target_cett
from sparsity_jax.workflows.at_cett import thresholds_at_cett

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("cett", help="per-layer thresholds for a target CETT on one checkpoint")
    common.add_workdir(p)
    p.add_argument("--cett", type=float, required=True, help="target CETT in [0, 1], e.g. 0.2")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--output", default=None, help="JSON path (default: WORKDIR/cett.json)")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def run(args) -> int:
    check_target_cett(args.cett)
    wd, step, params = common.trained_params(args)
    res = thresholds_at_cett(wd.run, params, wd.val, args.cett, workdir=wd.workdir, step=step)
    common.log(f"step {step}, target CETT {args.cett:g}\nlayer  threshold    CETT      sparsity")
    for i, (t, c, s) in enumerate(zip(res.threshold, res.realised_cett, res.sparsity)):
        common.log(f"{i:5d}  {t:9.5f}  {c:8.5f}  {s:8.4f}")
    common.log(f"overall sparsity {np.mean(res.sparsity):.4f}, activation ratio {res.activation_ratio:.4f}")
    common.log(TIMINGS.line())
    out = res.to_json() | {"seconds": {k: round(v, 2) for k, v in TIMINGS.split().items()}}  # the `time:` split
    output = args.output or wd.workdir.cett_json
    common.write_json(output, out)
    common.log(f"wrote {output}")
    return 0

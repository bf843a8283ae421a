"""Activation-ratio curves of our own runs: the points `sparsity-jax evaluate` records per
checkpoint (training tokens, activation ratio at PPL-p% and at CETT 0) and their fits
(Sparsing Law §4.2, App. B: warm-up checkpoints may be dropped before fitting)."""
from __future__ import annotations

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.runtime.workdir import PathLike, Workdir, read_json
from sparsity_jax.scaling.fit import CurveFit, fit_activation_curve

MIN_POINTS = 4


def run_points(workdir: PathLike | Workdir, which: str = "ppl1") -> dict:
    """{"tokens", "ratio", "warmup", "steps"} of a run's eval.json: `which` = "ppl<p>" (the
    activation ratio at PPL-p%, stabilised CETT) or "cett0" (a ≠ 0, the natural sparsity)."""
    path = (workdir if isinstance(workdir, Workdir) else Workdir(workdir)).eval_json
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `sparsity-jax evaluate --workdir {workdir}` first.")
    rows = read_json(path).get("checkpoints", [])
    key = "activation_ratio_cett0" if which == "cett0" else None
    p = which[3:] if which.startswith("ppl") else None
    if key is None and p is None:
        raise UserError(f"Pass the curve as ppl<p> (e.g. ppl1) or cett0; got {which!r}.")
    pts = [(r["train_tokens"], r[key] if key else r.get("ppl_p", {}).get(p), bool(r.get("warmup")), r["step"])
           for r in rows if "train_tokens" in r]
    pts = [q for q in pts if q[1] is not None]
    if len(pts) < MIN_POINTS:
        how = "" if key else f" with --ppl-p {p}"
        raise UserError(f"{path} has {len(pts)} checkpoints with a {which} activation ratio; a fit needs "
                        f"{MIN_POINTS}: evaluate a run with at least {MIN_POINTS} checkpoints{how}.")
    tokens, ratio, warm, steps = (np.asarray(v) for v in zip(*sorted(pts)))
    return {"tokens": tokens.astype(float), "ratio": ratio.astype(float), "warmup": warm, "steps": steps}


def fit_run(workdir: PathLike | Workdir, which: str = "ppl1", form: str = "auto", drop_warmup: bool = False) -> tuple[dict, CurveFit]:
    """(points, fit) of one run; with `drop_warmup` the checkpoints inside the warm-up are
    left out (the fit reports how many)."""
    pts = run_points(workdir, which)
    dropped = int(np.sum(pts["warmup"])) if drop_warmup else 0
    if len(pts["tokens"]) - dropped < MIN_POINTS:
        raise UserError(f"{workdir}: only {len(pts['tokens']) - dropped} checkpoints after the warm-up; "
                        "evaluate more checkpoints or fit without dropping the warm-up.")
    return pts, fit_activation_curve(pts["tokens"], pts["ratio"], form, drop_warmup=dropped)


def fit_json(fit: CurveFit) -> dict:
    """A fit as JSON-able numbers."""
    return {"form": fit.form, "params": fit.params, "stderr": fit.stderr, "mae": fit.mae, "mse": fit.mse,
            "n_points": fit.n_points, "dropped": fit.dropped, "limit": fit.limit, "aic": fit.aic, "aics": fit.aics}

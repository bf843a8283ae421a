"""The activation comparison: train a family of models (one settings object per variant,
each in its own workdir, resumable) and compare their sparsity. On each final checkpoint's
validation batches: PPL-p% sparsity and a CETT-vs-sparsity curve
(`search.checkpoint_sparsity`) and, with predictor steps, predictivity and hardware affinity
at the PPL-p% thresholds (`predict.analysis.deployment_aspects`). Results are the JSON
`report.cett_report` renders."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from sparsity_jax.methods import make_method
from sparsity_jax.predict.analysis import deployment_aspects
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.trained import open_trained
from sparsity_jax.runtime.workdir import Workdir, as_path
from sparsity_jax.search.checkpoint_sparsity import model_sparsity
from sparsity_jax.train.trainer import train

Log = Callable[[str], None]


def final_step(workdir: Workdir) -> int | None:
    """Latest checkpoint step of a workdir, None without checkpoints."""
    if not workdir.checkpoints.is_dir():
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def train_model(settings, variant: str, workdir: Workdir, *, log: Log = print) -> float:
    """Trains (or resumes) one model unless its final checkpoint exists; returns seconds spent."""
    done = final_step(workdir)
    if done is not None and done >= settings.train.steps:
        log(f"[{variant}] final checkpoint (step {done}) in {workdir}: not training again")
        return 0.0
    m = settings.model
    log(f"[{variant}] training {settings.train.steps} steps: d={m.d_model} L={m.num_layers} F={m.d_ff} in {workdir}")
    t0 = time.perf_counter()
    train(settings, workdir, make_method)
    return time.perf_counter() - t0


def analyse(settings, workdir: Workdir, p: float, target_cetts: Sequence[float], tol: float, predictor_steps: int, *,
            log: Log = print) -> dict:
    """The sparsity of the final checkpoint of `workdir` and, with `predictor_steps`, its
    predictivity and affinity at the PPL-p% thresholds (JSON-able)."""
    wd = open_trained(workdir, settings)
    try:
        step = wd.steps[-1]
        params = wd.restore(step)[0]["params"]
    finally:
        wd.close()
    r = model_sparsity(wd.run, params, wd.val, step, p, target_cetts, tol)
    out = r.to_json()
    if predictor_steps:
        q = r.ppl_p
        out.update(deployment_aspects(wd.run, params, wd.val, np.asarray(q["threshold"]), q["target_cett"],
                                      workdir=workdir, step=step, predictor_steps=predictor_steps,
                                      log=log).to_json())
    return out


def compare(models: dict, root, p: float, target_cetts: Sequence[float], tol: float, predictor_steps: int, *,
            log: Log = print) -> dict[str, dict]:
    """Trains what is missing of `models` ({variant: settings}, each in ROOT/<variant>), then
    analyses each final checkpoint (`analyse`, with its training seconds); {variant: JSON}."""
    root = as_path(root)
    train_seconds = {v: train_model(st, v, Workdir(root / v), log=log) for v, st in models.items()}
    results = {}
    for v, st in models.items():
        log(f"[{v}] PPL-{p:g}% search and CETT curve")
        results[v] = analyse(st, Workdir(root / v), p, target_cetts, tol, predictor_steps, log=log)
        results[v]["train_seconds"] = round(train_seconds[v], 1)
        q = results[v]["ppl_p"]
        log(f"[{v}] PPL-{p:g}%: CETT {q['target_cett']:.4f}, sparsity {q['sparsity']:.4f} "
            f"(PPL ratio {q['ppl_ratio']:.4f}, {q['evaluations']} sparse evaluations)")
    return results

"""`sparsity-jax compare`: train a family of tiny LMs (a config file's variants) and compare
their sparsity. By default the activations of ReLU² Wins §5 (Fig. 3a) at laptop scale
(configs/relu2/tiny.py: ReLU, ReLU², SiLU and parameter-matched SwiGLU on `local_code`);
`--config configs/sparsing_law/width_depth.py` compares width-depth ratios (Sparsing Law
§5). On each final checkpoint's validation batches: PPL-p% sparsity and a CETT-vs-sparsity
curve (`search.compare`), and predictivity and hardware affinity at the PPL-p% thresholds
(ReLU² Table 1's other two aspects, `predict.analysis.deployment_aspects`: low-rank
predictors trained briefly, `--predictor-steps`; reuse ratio at windows 1 and 8 and the
top-average co-activation gap). Writes WORKDIR/compare.json, compare.png, compare.md and,
when d/L differs, width_depth.png (`report.cett_report.write_compare_report`).

    sparsity-jax compare --workdir runs/compare [--variants relu,relu2] [--p 1]
        [--cetts 0,0.02,...] [--config FILE] [--config.train.steps=100 ...]

Resumable: a model whose workdir (WORKDIR/<variant>) already holds a checkpoint at
`train.steps` is not trained again; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime.workdir import Workdir, as_path

TAKES_CONFIG = True
CONFIG = "configs/relu2/tiny.py"
CETTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train a family of tiny models (ReLU/ReLU²/SiLU/SwiGLU by default), compare "
                                       "PPL-1%% sparsity and CETT curves")
    p.add_argument("--workdir", default="runs/compare", help="one sub-directory per variant")
    common.add_config(p, default=CONFIG, what="config file taking the variant as its :VARIANT (default "
                                              f"{CONFIG}); --config.a.b=V applies to every model")
    p.add_argument("--variants", "--activations", dest="variants", default=None,
                   help="comma-separated variants (default: the config file's VARIANTS)")
    p.add_argument("--p", type=float, default=1.0, help="PPL-p%% (percent)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--cetts", default=",".join(f"{c:g}" for c in CETTS), help="CETT grid of the curves")
    p.add_argument("--predictor-steps", type=int, default=300,
                   help="predictor training steps per variant (0: no predictivity / affinity columns)")
    common.add_eval_batches(p, text=False)  # it trains: its data needs a training split
    common.add_distributed(p)


def final_step(workdir: Workdir) -> int | None:
    """Latest checkpoint step of a workdir, None without checkpoints."""
    from sparsity_jax.runtime.checkpoint import Checkpointer

    if not workdir.checkpoints.is_dir():
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def train_model(settings, variant: str, workdir: Workdir) -> float:
    """Trains (or resumes) one model unless its final checkpoint exists; returns seconds spent."""
    from sparsity_jax.methods import make_method
    from sparsity_jax.train.trainer import train

    done = final_step(workdir)
    if done is not None and done >= settings.train.steps:
        common.log(f"[{variant}] final checkpoint (step {done}) in {workdir}: not training again")
        return 0.0
    m = settings.model
    common.log(f"[{variant}] training {settings.train.steps} steps: d={m.d_model} L={m.num_layers} "
               f"F={m.d_ff} in {workdir}")
    t0 = time.perf_counter()
    train(settings, workdir, make_method)
    return time.perf_counter() - t0


def analyse(settings, workdir: Workdir, p: float, cetts: Sequence[float], tol: float, predictor_steps: int) -> dict:
    """The sparsity of the final checkpoint of `workdir` and, with `predictor_steps`, its
    predictivity and affinity at the PPL-p% thresholds (JSON-able)."""
    from sparsity_jax.predict.analysis import deployment_aspects
    from sparsity_jax.runtime.trained import open_trained
    from sparsity_jax.search.compare import model_sparsity

    wd = open_trained(workdir, settings)
    try:
        step = wd.steps[-1]
        params = wd.restore(step)[0]["params"]
    finally:
        wd.close()
    r = model_sparsity(wd.run, params, wd.val, step, p, cetts, tol)
    out = r.to_json()
    if predictor_steps:
        q = r.ppl_p
        out.update(deployment_aspects(wd.run, params, wd.val, np.asarray(q["threshold"]), q["target_cett"],
                                      workdir=workdir, step=step, predictor_steps=predictor_steps,
                                      log=common.log).to_json())
    return out


def run(args) -> int:
    """Trains what is missing, analyses every model, writes compare.{json,png,md}."""
    from sparsity_jax import settings
    from sparsity_jax.report.cett_report import compare_table, write_compare_report
    from sparsity_jax.search.ppl import check_p
    from sparsity_jax.search.thresholds import check_cett

    check_p(args.p)
    if args.predictor_steps < 0:
        raise UserError(f"Pass --predictor-steps ≥ 0 (0: no predictivity / affinity); got {args.predictor_steps}.")
    cetts = sorted(set(comma_list(args.cetts, float, "--cetts")))
    check_cett(cetts)
    config = args.config.partition(":")[0]
    names = comma_list(args.variants, str, "--variants") if args.variants else list(settings.variants(config))
    if not names:
        raise UserError(f"{config} names no VARIANTS; pass --variants A,B (its :ARG values).")
    overrides = common.overrides(args)
    models = {v: settings.load(f"{config}:{v}", overrides) for v in names}  # every name checked before training
    common.init_distributed(args)
    root = as_path(args.workdir)
    train_seconds = {v: train_model(models[v], v, Workdir(root / v)) for v in names}
    results = {}
    for v in names:
        common.log(f"[{v}] PPL-{args.p:g}% search and CETT curve")
        results[v] = analyse(models[v], Workdir(root / v), args.p, cetts, args.tol, args.predictor_steps)
        results[v]["train_seconds"] = round(train_seconds[v], 1)
        q = results[v]["ppl_p"]
        common.log(f"[{v}] PPL-{args.p:g}%: CETT {q['target_cett']:.4f}, sparsity {q['sparsity']:.4f} "
                   f"(PPL ratio {q['ppl_ratio']:.4f}, {q['evaluations']} sparse evaluations)")
    out = {"config": config, "overrides": overrides, "p": args.p, "tol": args.tol, "models": results}
    if common.is_main():
        paths = write_compare_report(out, root)
        common.log(compare_table(results, args.p))
        common.log("wrote " + ", ".join(paths))
    return 0

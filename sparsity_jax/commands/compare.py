"""`sparsity-jax compare`: train a family of tiny LMs (a config file's variants) and compare
their sparsity. By default the activations of ReLU² Wins §5 (Fig. 3a) at laptop scale
(configs/relu2/tiny.py: ReLU, ReLU², SiLU and parameter-matched SwiGLU on `local_code`);
`--config configs/sparsing_law/width_depth.py` compares width-depth ratios (Sparsing Law
§5). On each final checkpoint's validation batches:
  * PPL-1% sparsity (Sparsing Law §3.1, App. C): CETT_p by `PplSearch`, its per-layer
    thresholds and the sparsity they give (fraction of real token×neuron pairs with
    ‖n_i‖ < t_l on the dense activations, mean over layers);
  * a CETT-vs-sparsity curve (ReLU² Fig. 3a, Sparsing Law Fig. 3): for a grid of CETT
    values the exact per-layer thresholds (one `find_threshold` call for the whole grid)
    and, from one sparse pass per value, the PPL ratio exp(loss_sparse − loss_dense).
    CETT 0 drops only exact zeros, so its sparsity is the activation's natural sparsity;
  * predictivity and hardware affinity at the PPL-p% thresholds (ReLU² Table 1's other two
    aspects, §5.2–5.3): low-rank predictors trained briefly (`--predictor-steps`), their
    threshold-strategy recall, prediction sparsity and PPL ratio with the predicted FFN
    mode; the reuse ratio at windows 1 and 8 and the top-average co-activation gap.
Writes WORKDIR/compare.json, compare.png (sparsity vs CETT and PPL ratio vs sparsity,
one curve per variant, PPL-1% points marked), compare.md (the PPL-1% table) and, when
d/L differs, width_depth.png (activation ratio and loss vs d/L).

    sparsity-jax compare --workdir runs/compare [--variants relu,relu2] [--p 1]
        [--cetts 0,0.02,...] [--config FILE] [--config.train.steps=100 ...]

Resumable: a model whose workdir (WORKDIR/<variant>) already holds a checkpoint at
`train.steps` is not trained again; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import math
import os
import time
from typing import Sequence

import jax
import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list

TAKES_CONFIG = True
CONFIG = "configs/relu2/tiny.py"
ASPECTS = ("recall", "prediction_sparsity", "predictor_ppl_ratio", "reuse_w1", "reuse_w8", "coactivation_gap")
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
    common.add_eval_batches(p)
    common.add_distributed(p)


def _final_step(workdir: str) -> int | None:
    """Latest checkpoint step of a workdir, None without checkpoints."""
    from sparsity_jax.runtime.checkpoint import Checkpointer, checkpoint_dir

    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def train_model(settings, variant: str, workdir: str) -> float:
    """Trains (or resumes) one model unless its final checkpoint exists; returns seconds spent."""
    from sparsity_jax.train.trainer import train

    done = _final_step(workdir)
    if done is not None and done >= settings.train.steps:
        common.log(f"[{variant}] final checkpoint (step {done}) in {workdir}: not training again")
        return 0.0
    m = settings.model
    common.log(f"[{variant}] training {settings.train.steps} steps: d={m.d_model} L={m.num_layers} "
               f"F={m.d_ff} in {workdir}")
    t0 = time.perf_counter()
    train(settings, workdir)
    return time.perf_counter() - t0


def deployment_aspects(run, params, val, threshold_L, cett: float, workdir: str, step: int,
                       predictor_steps: int) -> dict:
    """Predictivity and affinity columns at the per-layer thresholds (threshold strategy;
    reuse at windows 1 and 8), and the full per-layer results beside them."""
    from sparsity_jax.commands import affinity, predictor
    from sparsity_jax.predict.model import PredictorConfig

    cfg = PredictorConfig(steps=predictor_steps, train_batches=4)
    pred = predictor.predictivity(run, params, val, threshold_L, cett, cfg, [], workdir=workdir, step=step)
    aff = affinity.affinity_of(run.graphdef, params, val, threshold_L, (1, 8))
    q, ppl = pred["quality"][0], pred["ppl"]
    columns = {"recall": q["recall"], "prediction_sparsity": q["prediction_sparsity"],
               "predictor_ppl_ratio": ppl["predicted"][0]["ppl_ratio"], "oracle_ppl_ratio": ppl["oracle"]["ppl_ratio"],
               "reuse_w1": float(np.mean(aff["reuse_ratio"]["1"])), "reuse_w8": float(np.mean(aff["reuse_ratio"]["8"])),
               "coactivation_gap": float(np.mean(aff["coactivation_gap"]))}
    aff.pop("hot_neuron_cdf")
    return {"aspects": columns, "predictivity": pred, "affinity": aff}


def analyse(settings, workdir: str, p: float, cetts: Sequence[float], tol: float, predictor_steps: int = 300) -> dict:
    """PPL-p% result and CETT-vs-sparsity curve of the final checkpoint of `workdir`."""
    from sparsity_jax.search.ppl import PplSearch
    from sparsity_jax.search.thresholds import cache_thresholds, sparse_pass, threshold_sparsify
    from sparsity_jax.runtime.trained import open_trained as open_workdir

    wd = open_workdir(workdir, settings)
    try:
        params = wd.restore(wd.steps[-1])[0]["params"]
    finally:
        wd.close()
    run, val, steps = wd.run, wd.val, wd.steps
    search = PplSearch(run.graphdef, [params], val)
    cache = search.caches[0]
    t0 = time.perf_counter()
    r = search.search(p, tol)
    t_search = time.perf_counter() - t0
    thr = cache_thresholds(cache, list(cetts), search.prepared[0])  # fields (L, K); set-up reused
    ratios = [math.exp(sparse_pass(run.graphdef, params, val, threshold_sparsify(thr.threshold[:, k])).loss - cache.loss)
              for k in range(len(cetts))]
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    m = run.model_cfg
    return {
        "step": int(steps[-1]), "d_model": m.d_model, "num_layers": m.num_layers, "d_ff": m.d_ff,
        "parameters": n_params, "validation_tokens": int(cache.tokens), "dense_loss": cache.loss,
        "dense_ppl": math.exp(cache.loss),
        "ppl_p": {"p": p, "cett": r.cett, "cett_upper": r.cett_upper, "ppl_ratio": r.ratio,
                  "ppl_ratio_upper": r.ratio_upper, "sparsity": r.overall_sparsity,
                  "activation_ratio": 1 - r.overall_sparsity, "layer_sparsity": r.sparsity[0].round(6).tolist(),
                  "threshold": r.threshold[0].tolist(), "evaluations": r.evaluations, "converged": r.converged,
                  "search_seconds": round(t_search, 3)},
        "curve": {"cett": list(map(float, cetts)), "realised_cett": thr.cett.mean(axis=0).round(6).tolist(),
                  "sparsity": thr.sparsity.mean(axis=0).round(6).tolist(),
                  "layer_sparsity": thr.sparsity.T.round(6).tolist(), "ppl_ratio": np.round(ratios, 6).tolist()},
        **(deployment_aspects(run, params, val, r.threshold[0], r.cett, workdir, int(steps[-1]), predictor_steps)
           if predictor_steps else {}),
    }


def _cell(aspects: dict | None, key: str) -> str:
    return "-" if aspects is None else f"{aspects[key]:.4f}"


def table(results: dict, p: float) -> str:
    """Markdown table of the PPL-p% results, one row per variant."""
    head = (f"| variant | d/L | F | params | dense PPL | CETT at PPL-{p:g}% | PPL ratio | sparsity | "
            "activation ratio | natural sparsity (CETT 0) | sparse evals | recall | prediction sparsity | "
            "predictor PPL ratio | reuse w=1 | reuse w=8 | co-activation gap |\n" + "|---" * 17 + "|")
    rows = []
    for name, r in results.items():
        q, c = r["ppl_p"], r["curve"]
        natural = c["sparsity"][c["cett"].index(0.0)] if 0.0 in c["cett"] else float("nan")
        rows.append(f"| {name} | {r['d_model'] / r['num_layers']:.3g} | {r['d_ff']} | {r['parameters']:,} | "
                    f"{r['dense_ppl']:.3f} | {q['cett']:.4f} | "
                    f"{q['ppl_ratio']:.4f} | {q['sparsity']:.4f} | {q['activation_ratio']:.4f} | {natural:.4f} | "
                    f"{q['evaluations']} | " + " | ".join(_cell(r.get("aspects"), k) for k in ASPECTS) + " |")
    return "\n".join([head] + rows)


def run(args) -> int:
    """Trains what is missing, analyses every model, writes compare.{json,png,md}."""
    from sparsity_jax import settings
    from sparsity_jax.report.cett_report import write_compare_report
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
    if common.is_main():
        os.makedirs(args.workdir, exist_ok=True)
    train_seconds = {v: train_model(models[v], v, os.path.join(args.workdir, v)) for v in names}
    results = {}
    for v in names:
        common.log(f"[{v}] PPL-{args.p:g}% search and CETT curve")
        results[v] = analyse(models[v], os.path.join(args.workdir, v), args.p, cetts, args.tol, args.predictor_steps)
        results[v]["train_seconds"] = round(train_seconds[v], 1)
        q = results[v]["ppl_p"]
        common.log(f"[{v}] PPL-{args.p:g}%: CETT {q['cett']:.4f}, sparsity {q['sparsity']:.4f} "
                   f"(PPL ratio {q['ppl_ratio']:.4f}, {q['evaluations']} sparse evaluations)")
    out = {"config": config, "overrides": overrides, "p": args.p, "tol": args.tol, "models": results,
           "table": table(results, args.p)}
    if common.is_main():
        paths = write_compare_report(out, args.workdir)
        common.log(out["table"])
        common.log("wrote " + ", ".join(paths))
    return 0

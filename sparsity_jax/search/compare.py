"""Small end-to-end comparison of activations: ReLU² Wins §5 (Fig. 3a) at laptop scale.

Trains one tiny LM per activation (configs/relu2/tiny.py: ReLU, ReLU², SiLU and
parameter-matched SwiGLU on `local_code`), then on each final checkpoint's validation
batches:
  * PPL-1% sparsity (Sparsing Law §3.1, App. C): CETT_p by `PplSearch`, its per-layer
    thresholds and the sparsity they give (fraction of real token×neuron pairs with
    ‖n_i‖ < t_l on the dense activations, mean over layers);
  * a CETT-vs-sparsity curve (ReLU² Fig. 3a, Sparsing Law Fig. 3): for a grid of CETT
    values the exact per-layer thresholds (one `find_threshold` call for the whole grid)
    and, from one sparse pass per value, the PPL ratio exp(loss_sparse − loss_dense).
    CETT 0 drops only exact zeros, so its sparsity is the activation's natural sparsity.
Writes WORKDIR/compare.json, compare.png (sparsity vs CETT and PPL ratio vs sparsity,
one curve per activation, PPL-1% points marked) and compare.md (the PPL-1% table).

    python -m sparsity_jax.search.compare --workdir runs/compare [--activations relu,relu2]
        [--p 1] [--cetts 0,0.02,...] [--set train.steps=100 ...]

Resumable: a model whose workdir (WORKDIR/<activation>) already holds a checkpoint at
`train.steps` is not trained again; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from sparsity_jax.errors import UserError, comma_list

CONFIG = "configs/relu2/tiny.py"
ACTIVATIONS = ("relu", "relu2", "silu", "swiglu")
CETTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _final_step(workdir: str) -> int | None:
    """Latest checkpoint step of a workdir, None without checkpoints."""
    from sparsity_jax.train.checkpoint import Checkpointer, checkpoint_dir

    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def train_model(config: str, activation: str, overrides: dict[str, str], workdir: str) -> float:
    """Trains (or resumes) one model unless its final checkpoint exists; returns seconds spent."""
    from sparsity_jax.config import apply_overrides, load_config
    from sparsity_jax.train.trainer import train

    cfg = apply_overrides(load_config(f"{config}:{activation}"), overrides)
    done = _final_step(workdir)
    if done is not None and done >= cfg.train.steps:
        _log(f"[{activation}] final checkpoint (step {done}) in {workdir}: not training again")
        return 0.0
    _log(f"[{activation}] training {cfg.train.steps} steps: d={cfg.model.d_model} L={cfg.model.num_layers} "
         f"F={cfg.model.d_ff} in {workdir}")
    t0 = time.perf_counter()
    train(cfg, workdir)
    return time.perf_counter() - t0


def analyse(workdir: str, p: float, cetts: Sequence[float], eval_batches: int | None, tol: float) -> dict:
    """PPL-p% result and CETT-vs-sparsity curve of the final checkpoint of `workdir`."""
    from sparsity_jax.search.commands import load_workdir
    from sparsity_jax.search.ppl import PplSearch
    from sparsity_jax.search.thresholds import cache_thresholds, sparse_pass, threshold_sparsify

    ckpt, run, val, steps = load_workdir(workdir, eval_batches)
    try:
        params = ckpt.restore(steps[-1], run.abstract_state)[0]["params"]
    finally:
        ckpt.close()
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
    }


def table(results: dict, p: float) -> str:
    """Markdown table of the PPL-p% results, one row per activation."""
    head = (f"| activation | F | params | dense PPL | CETT at PPL-{p:g}% | PPL ratio | sparsity | "
            "activation ratio | natural sparsity (CETT 0) | sparse evals |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for act, r in results.items():
        q, c = r["ppl_p"], r["curve"]
        natural = c["sparsity"][c["cett"].index(0.0)] if 0.0 in c["cett"] else float("nan")
        rows.append(f"| {act} | {r['d_ff']} | {r['parameters']:,} | {r['dense_ppl']:.3f} | {q['cett']:.4f} | "
                    f"{q['ppl_ratio']:.4f} | {q['sparsity']:.4f} | {q['activation_ratio']:.4f} | {natural:.4f} | "
                    f"{q['evaluations']} |")
    return "\n".join([head] + rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sparsity_jax.search.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/compare")
    ap.add_argument("--config", default=CONFIG, help="config file taking the activation as its :ARG")
    ap.add_argument("--activations", default=",".join(ACTIVATIONS))
    ap.add_argument("--p", type=float, default=1.0, help="PPL-p%% (percent)")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--cetts", default=",".join(f"{c:g}" for c in CETTS), help="CETT grid of the curves")
    ap.add_argument("--eval-batches", type=int, default=None, help="default: the config's train.eval_batches")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every model, e.g. --set train.steps=100")
    return ap.parse_args(argv)


def run_compare(args: argparse.Namespace) -> dict:
    """Trains what is missing, analyses every model, writes compare.{json,png,md}."""
    from sparsity_jax.report.cett_report import write_compare_report
    from sparsity_jax.search.ppl import check_p
    from sparsity_jax.search.thresholds import check_cett

    check_p(args.p)
    cetts = sorted(set(comma_list(args.cetts, float, "--cetts")))
    check_cett(cetts)
    acts = [a.strip() for a in args.activations.split(",") if a.strip()]
    if not acts:
        raise UserError("Pass at least one activation, e.g. --activations relu,relu2.")
    overrides = {}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise UserError(f"Pass --set as KEY=VALUE, e.g. train.steps=100; got {kv!r}.")
        overrides[key.strip()] = value.strip()
    os.makedirs(args.workdir, exist_ok=True)
    train_seconds = {a: train_model(args.config, a, overrides, os.path.join(args.workdir, a)) for a in acts}
    results = {}
    for a in acts:
        _log(f"[{a}] PPL-{args.p:g}% search and CETT curve")
        results[a] = analyse(os.path.join(args.workdir, a), args.p, cetts, args.eval_batches, args.tol)
        results[a]["train_seconds"] = round(train_seconds[a], 1)
        q = results[a]["ppl_p"]
        _log(f"[{a}] PPL-{args.p:g}%: CETT {q['cett']:.4f}, sparsity {q['sparsity']:.4f} "
             f"(PPL ratio {q['ppl_ratio']:.4f}, {q['evaluations']} sparse evaluations)")
    out = {"config": args.config, "overrides": overrides, "p": args.p, "tol": args.tol, "models": results,
           "table": table(results, args.p)}
    paths = write_compare_report(out, args.workdir)
    _log(out["table"])
    _log("wrote " + ", ".join(paths))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import absl.logging  # orbax logs routine notices (read-only options, ...) as warnings

    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        run_compare(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

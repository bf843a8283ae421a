"""End-to-end PPL-p% search: ours (`search.ppl.PplSearch`) vs the reference algorithm.

Reference (Sparsing Law App. C Algorithm 1 as the public scripts run it): bisection on
CETT in [0, 1] until hi − lo ≤ tol (1e-3: 10 steps), and at EVERY step, per checkpoint,
the dense forward pass again, per-layer thresholds by the 65,536-point linspace /
16-step bisection (`bench/cett_search.py:reference_search`), then the sparse pass;
returns the midpoint. Ours: one dense pass and one threshold-search set-up per
checkpoint, exact thresholds on the cached scores, 3–7 sparse passes (`search.ppl.find_crossing`);
returns the feasible bracket end. Same tiny trained model, same validation batches, same device; each
search is run once to compile, then timed (median of --runs).

    .venv/bin/python bench/ppl_search.py [--size small|medium] [--workdir DIR] [--p 1] [--runs 1]

Without --workdir a tiny ReLU model is trained first in a temporary directory:
  small   tests/train/helpers.tiny_config: L=2, d=32, F=64, 30 steps (checkpoints 10/20/30),
          validation 8 × 16 × 32 tokens;
  medium  L=4, d=128, F=512, 60 steps of 16 × 128 tokens (checkpoints 20/40/60),
          validation 4 × 16 × 128 tokens.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cett_search import reference_search  # noqa: E402
from sparsity_jax.search.ppl import PplSearch  # noqa: E402
from sparsity_jax.search.thresholds import dense_pass, sparse_pass, threshold_sparsify  # noqa: E402


def reference_ppl_search(graphdef, params_list, batches, p: float, tol: float = 1e-3) -> tuple[float, int]:
    """Bisection on CETT recomputing dense pass and thresholds at every step."""
    target = 1 + p / 100
    lo, hi, evals = 0.0, 1.0, 0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        ratios = []
        for params in params_list:
            cache = dense_pass(graphdef, params, batches)
            thr, _ = reference_search(cache.a_LxNxF, cache.w_out_LxFxD, np.asarray([mid], np.float32))
            ev = sparse_pass(graphdef, params, batches, threshold_sparsify(np.asarray(thr)[:, 0]))
            ratios.append(math.exp(ev.loss - cache.loss))
        evals += 1
        if np.mean(ratios) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi), evals


def ours(graphdef, params_list, batches, p: float, tol: float = 1e-3):
    return PplSearch(graphdef, params_list, batches).search(p, tol)


def timed(fn, runs: int):
    fn()  # compile
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


SIZES = {
    "small": ({"train.steps": 30, "train.checkpoint_every": 10}, 8),
    "medium": ({"model.d_model": 128, "model.num_layers": 4, "model.d_ff": 512, "model.num_heads": 4,
                "train.seq_len": 128, "train.steps": 60, "train.checkpoint_every": 20,
                "optimizer.warmup_steps": 10}, 4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--p", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--eval-batches", type=int, default=None, help="default: 8 (small) / 4 (medium)")
    ap.add_argument("--last", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    workdir = args.workdir
    if workdir is None:
        from sparsity_jax.methods import make_method
        from sparsity_jax.train.trainer import train
        from tests.train.helpers import tiny_config

        workdir = tempfile.mkdtemp(prefix="ppl_bench_")
        train(tiny_config(**SIZES[args.size][0], **{"train.log_every": 1000}), workdir, make_method)
    from sparsity_jax.settings import from_saved
    from sparsity_jax.runtime.trained import checkpoints, open_trained, saved_config

    ckpt, steps = checkpoints(workdir)
    eval_batches = args.eval_batches or SIZES[args.size][1]
    settings = from_saved(saved_config(ckpt, steps[-1]), {"train.eval_batches": str(eval_batches)})
    wd = open_trained(workdir, settings, ckpt, steps)
    run, val, steps = wd.run, wd.val, steps[-args.last:]
    params = [wd.restore(s)[0]["params"] for s in steps]
    wd.close()
    n_tok = int(sum(float(np.sum(np.asarray(b["loss_weights"]) > 0)) for b in val))
    print(f"device: {jax.devices()[0].device_kind}; model L={run.model_cfg.num_layers} d={run.model_cfg.d_model} "
          f"F={run.model_cfg.d_ff}; checkpoints {steps}; {n_tok} validation tokens; PPL-{args.p:g}%, tol {args.tol}")
    t_ours, r = timed(lambda: ours(run.graphdef, params, val, args.p, args.tol), args.runs)
    t_ref, (c_ref, n_ref) = timed(lambda: reference_ppl_search(run.graphdef, params, val, args.p, args.tol), args.runs)
    print(f"ours:      CETT_p {r.target_cett:.5f} (bracket [{r.target_cett:.5f}, {r.target_cett_upper}], "
          f"ratio {r.ratio:.5f}), "
          f"{r.evaluations} sparse evaluations, {t_ours:.2f} s")
    print(f"reference: CETT_p {c_ref:.5f}, {n_ref} sparse evaluations (+{n_ref} dense passes and threshold "
          f"bisections per checkpoint), {t_ref:.2f} s")
    print(f"|CETT_p ours - reference| = {abs(r.target_cett - c_ref):.5f}")
    print(f"SPEED RATIO reference/ours = {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()

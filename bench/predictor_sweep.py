"""Predictor quality on a trained run (ReLU² §5.2, issue 12 acceptance 3): recall and
prediction sparsity of the threshold strategy on validation tokens, per predictor setting.

Labels at the run's PPL-1% CETT (`--cett`), training tokens from `--train-batches`
training batches; each setting (a Python dict of `PredictorConfig` fields) is trained
from scratch on the same tokens and evaluated on all real validation tokens.

    .venv/bin/python bench/predictor_sweep.py --workdir runs/relu2_tiny --cett 0.07357 \
        "{}" "{'pos_weight': 15.0}" "{'rank': 16}" "{'rank': 32}"
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax import settings  # noqa: E402
from sparsity_jax.metrics.predictivity import predictor_metrics  # noqa: E402
from sparsity_jax.predict import lowrank as pm  # noqa: E402
from sparsity_jax.predict.data import token_set, training_batches  # noqa: E402
from sparsity_jax.predict.train import train_predictors  # noqa: E402
from sparsity_jax.search.thresholds import thresholds_for_cett  # noqa: E402
from sparsity_jax.runtime.trained import checkpoints, saved_config
from sparsity_jax.runtime.trained import open_trained as open_workdir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--cett", type=float, required=True)
    ap.add_argument("--train-batches", type=int, default=16)
    ap.add_argument("settings", nargs="+", help="PredictorConfig fields as Python dicts, e.g. \"{'rank': 32}\"")
    args = ap.parse_args()
    ckpt, steps = checkpoints(args.workdir)
    wd = open_workdir(args.workdir, settings.from_saved(saved_config(ckpt, steps[-1])), ckpt, steps)
    params = wd.restore(steps[-1])[0]["params"]
    wd.close()
    m = wd.run.model_cfg
    thr = thresholds_for_cett((wd.run.graphdef, params), wd.val, args.cett)
    train = token_set(wd.run.graphdef, params, training_batches(wd.run, args.workdir, args.train_batches),
                      thr.threshold)
    val = token_set(wd.run.graphdef, params, wd.val, thr.threshold)
    print(f"{args.workdir} step {steps[-1]} ({m.activation}, d={m.d_model}, F={m.d_ff}), CETT {args.cett}: "
          f"{train.x_LxNxD.shape[1]:,} training / {val.x_LxNxD.shape[1]:,} validation tokens; label active share "
          f"train {train.labels_LxNxF.mean():.4f}, validation {val.labels_LxNxF.mean():.4f}", flush=True)
    n_ffn = pm.ffn_matrices(m.activation) * m.d_model * m.d_ff
    for text in args.settings:
        cfg = pm.PredictorConfig(**ast.literal_eval(text)).validate()
        rank = pm.resolve_rank(cfg, m.d_model, m.d_ff, pm.ffn_matrices(m.activation))
        t0 = time.perf_counter()
        pred, info = train_predictors(train, cfg, rank, wd.run.mesh)
        scores = np.asarray(pm.scores(pred, jnp.asarray(val.x_LxNxD)))[:, None]
        q = predictor_metrics(scores, val.labels_LxNxF[:, None])
        r = lambda v: np.round(np.asarray(v), 3).tolist()  # noqa: E731
        print(f"{text}: rank {rank} ({pm.parameter_count(m.d_model, m.d_ff, rank, cfg.bias) / n_ffn:.2%} of the FFN "
              f"parameters), {time.perf_counter() - t0:.0f} s; recall {float(np.mean(q.recall)):.4f} {r(q.recall)}, "
              f"prediction sparsity {float(np.mean(q.prediction_sparsity)):.4f} {r(q.prediction_sparsity)}, "
              f"precision {float(np.mean(q.precision)):.4f}", flush=True)


if __name__ == "__main__":
    main()

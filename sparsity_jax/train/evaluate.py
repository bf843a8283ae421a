"""`sparsity-jax evaluate`: validation loss, perplexity and per-layer activation ratio of
every checkpoint in a workdir, written to JSON (default WORKDIR/eval.json).

The config comes from the latest checkpoint's metadata (the run's own config) unless a
config file is given; `--config.x=y` overrides apply on top (e.g. a different mesh).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from sparsity_jax.config import apply_overrides, config_from_json, load_config
from sparsity_jax.errors import UserError
from sparsity_jax.train.checkpoint import Checkpointer
from sparsity_jax.train.logger import log_print
from sparsity_jax.train.trainer import build_run, validation_batches


def evaluate_workdir(workdir: str, *, config_path: str | None = None, overrides: dict | None = None,
                     eval_batches: int | None = None, output: str | None = None) -> list[dict]:
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist; pass the workdir of a trained run")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise UserError(f"no checkpoints in {workdir}: train first or pass the workdir of a trained run")
    if config_path:
        cfg = load_config(config_path)
    else:
        cfg = config_from_json(json.dumps(ckpt.restore_meta(steps[-1])["config"]))
    if eval_batches is not None:
        overrides = dict(overrides or {}, **{"train.eval_batches": str(eval_batches)})
    cfg = apply_overrides(cfg, overrides or {})
    run = build_run(cfg, workdir)
    val = validation_batches(run, workdir)
    main = jax.process_index() == 0
    results = []
    for step in steps:
        state, _ = ckpt.restore(step, run.abstract_state)
        m = run.evaluate(state["params"], val, run.sparsify(state))
        row = {"step": step, **{k: np.asarray(v).tolist() for k, v in m.items()}}
        results.append(row)
        log_print(f"step {step}: loss {row['loss']:.4f}, perplexity {row['perplexity']:.3f}, "
                  f"act ratio/layer {[round(r, 3) for r in row['act_ratio']]}", main)
    ckpt.close()
    output = output or os.path.join(workdir, "eval.json")
    if main:
        with open(output, "w") as f:
            json.dump({"workdir": os.path.abspath(workdir), "checkpoints": results}, f, indent=2)
        log_print(f"wrote {output}", main)
    return results

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


def _merged(defaults: dict, saved: dict) -> dict:
    """`saved` over `defaults`, recursively: configs written before a field existed still load."""
    out = dict(defaults)
    for k, v in saved.items():
        out[k] = _merged(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
    return out


def open_workdir(workdir: str, *, config_path: str | None = None, overrides: dict | None = None,
                 eval_batches: int | None = None):
    """(checkpointer, run, validation batches, checkpoint steps) of a trained workdir.

    The config is the run's own (from the latest checkpoint's metadata, over the current
    defaults) unless `config_path` is given; `overrides` (`a.b` → string) apply on top.
    """
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist; pass the workdir of a trained run")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise UserError(f"no checkpoints in {workdir}: train first or pass the workdir of a trained run")
    if config_path:
        cfg = load_config(config_path)
    else:
        saved = ckpt.restore_meta(steps[-1])["config"]
        cfg = config_from_json(json.dumps(_merged(load_config().to_dict(), saved)))
    if eval_batches is not None:
        if eval_batches <= 0:
            raise UserError(f"--eval-batches must be positive, got {eval_batches}")
        overrides = dict(overrides or {}, **{"train.eval_batches": str(eval_batches)})
    cfg = apply_overrides(cfg, overrides or {})
    run = build_run(cfg, workdir)
    return ckpt, run, validation_batches(run, workdir), steps


def evaluate_workdir(workdir: str, *, config_path: str | None = None, overrides: dict | None = None,
                     eval_batches: int | None = None, output: str | None = None) -> list[dict]:
    ckpt, run, val, steps = open_workdir(workdir, config_path=config_path, overrides=overrides,
                                         eval_batches=eval_batches)
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

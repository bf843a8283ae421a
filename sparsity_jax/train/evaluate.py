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


def sparse_inference_workdir(workdir: str, *, ks=None, drop_shares=(), step: int | None = None,
                             structure: str = "auto", num_experts: int | None = None, seed: int = 0,
                             eval_batches: int | None = None, dispatch: str | None = None,
                             n_iter: int | None = None) -> dict:
    """Validation PPL of one checkpoint (default: the latest) run as an MoE with k = 1 … N
    experts and with dynamic top-k (SSD §5.2 Fig. 4a, §5.3; see `ssd.inference`).

    N defaults to the run's `ssd.num_experts`; ks ("all" = 1 … N) to `inference.default_ks`. Dense
    checkpoints (and any with structure="moefy") are MoEfied with a key from `seed`.
    Returns a JSON-able dict: step, structure, num_experts, dense loss/PPL, rows.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    from sparsity_jax.nn.ffn import Sparsify
    from sparsity_jax.ssd import inference as inf

    ckpt, run, val, steps = open_workdir(workdir, eval_batches=eval_batches)
    try:
        cfg = run.cfg
        n = int(num_experts or cfg.ssd.num_experts)
        ks = list(range(1, n + 1)) if ks == "all" else ks or inf.default_ks(n, cfg.ssd.top_k)
        ks = inf.check_ks(ks, n)
        drop_shares = inf.check_drop_shares(drop_shares)
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir}; available steps: {steps}")
        state, meta = ckpt.restore(step, run.abstract_state)
    finally:
        ckpt.close()
    sparse_trained = inf.was_sparse(meta)
    labels = state.get("ssd_labels") if n == cfg.ssd.num_experts else None
    params, centres, used = inf.inference_experts(
        state["params"], n, structure=structure, sparse_trained=sparse_trained, key=jax.random.key(seed),
        labels=labels, n_iter=n_iter or cfg.ssd.kmeans_iters)
    params = jax.device_put(params, run.state_shardings["params"])
    centres = jax.device_put(centres, NamedSharding(run.mesh, PartitionSpec()))
    evaluate = lambda p, sp: run.evaluate(p, val, sp)  # noqa: E731
    dense = evaluate(params, Sparsify())
    rows = inf.sweep(evaluate, params, centres, n, ks, drop_shares, seq_len=cfg.train.seq_len, dispatch=dispatch)
    main = jax.process_index() == 0
    log_print(f"{workdir} step {step} ({used} experts, N={n}): dense PPL {dense['perplexity']:.3f}; "
              + ", ".join(f"k={r['k']}" + (f"/drop {r['drop_share']:g}" if r["drop_share"] else "")
                          + f" {r['perplexity']:.3f}" for r in rows), main)
    return {"workdir": os.path.abspath(workdir), "step": step, "structure": used, "sparse_trained": sparse_trained,
            "num_experts": n, "ks": ks, "ari_threshold": float(cfg.ssd.ari_threshold),
            "train_top_k": int(cfg.ssd.top_k) if sparse_trained else None,
            "dispatch": dispatch or inf.default_dispatch(), "seq_len": int(cfg.train.seq_len),
            "dense": {"loss": float(dense["loss"]), "perplexity": float(dense["perplexity"])}, "rows": rows}

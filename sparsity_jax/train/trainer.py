"""The training loop: data → jitted train step → logs, evaluation and checkpoints.

Exactness of resume: the checkpoint holds the train state and the data position (global
batches consumed); the data iterator is deterministic and restarts at that position, and
the compiled step is the same, so a resumed run reproduces the uninterrupted losses.
Metrics of step s are fetched after step s+1 is dispatched (no pipeline stall); before a
checkpoint they are checked synchronously, so a checkpoint is only written after a
finite loss and gradient norm. NaN/inf stops the run with the step number (exit 3) and
keeps the last good checkpoint. SIGTERM (preemption) saves at the current step and exits 0.
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from sparsity_jax.errors import NonFiniteLoss, UserError
from sparsity_jax.nn.ffn import Sparsify
from sparsity_jax.ssd.baselines import BaselineRun, method_of
from sparsity_jax.ssd.controller import SSDRun
from sparsity_jax.train.checkpoint import Checkpointer
from sparsity_jax.train.logger import MetricsWriter, log_print, progress_line
from sparsity_jax.train.setup import Run, build, peak_flops_per_device



DENSE = Sparsify()


def _data():
    from sparsity_jax import data  # imports TensorFlow: only where data is needed

    return data


def validation_batches(run: Run, workdir: str) -> list[dict[str, jax.Array]]:
    cfg = run.cfg
    it = _data().get_batches(
        cfg.data, split="validation", global_batch_size=cfg.train.global_batch_size, seq_len=cfg.train.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(), cache_dir=workdir,
        max_batches=cfg.train.eval_batches,
    )
    batches = [run.device_batch(b) for b in it]
    if not batches:
        raise UserError("the validation split is empty; use a larger corpus or raise data.val_permille")
    return batches


def build_run(cfg, workdir: str) -> Run:
    vocab = _data().vocab_size(cfg.data, cache_dir=workdir)
    return build(cfg, vocab)


def _meta(run: Run, step: int, method: SSDRun | BaselineRun | None = None) -> dict:
    meta = {"data_position": int(step), "step": int(step), "config": json.loads(run.cfg.to_json_best_effort())}
    if method is not None:
        meta["ssd"] = method.meta()
    return meta


def _step_flops(run: Run, batch, top_k: int = 0) -> float | None:
    """FLOPs of one train step from XLA's cost analysis of the lowered (pre-optimisation)
    HLO; shapes only, no execution, no compile. Not the compiled module's analysis:
    XLA:GPU leaves the cuBLAS matmul custom calls out of it (an H100 reported 0.4 GFLOP
    for a 0.9 TFLOP step), while the lowered HLO counts every dot on every backend
    (within 0.6% of XLA:CPU's compiled count for the tiny SSD steps).

    With train.grad_accum = G > 1 the micro-batches run in a `lax.scan`, whose body the
    cost analysis counts once: the count is multiplied by G (which also multiplies the
    optimizer update outside the scan, a negligible share of a step)."""
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)  # noqa: E731
    try:
        lowered = run.train_step.lower(run.abstract_state, jax.tree.map(spec, batch), DENSE, False, top_k)
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) * max(int(run.cfg.train.grad_accum), 1) or None
    except Exception:  # cost analysis is best effort on some backends
        return None


def _eval_sparsify(run: Run, method: SSDRun | BaselineRun | None, state, step: int) -> Sparsify:
    """FFN settings of the evaluation after `step` steps: the method's (an SMoE /
    MoE-Dropout evaluates as its MoE), else the run's own (dense, dead-unit mask)."""
    sp = method.eval_sparsify(state, step) if method is not None else None
    return run.sparsify(state) if sp is None else sp


def train(cfg, workdir: str) -> dict[str, Any]:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns the final summary."""
    main = jax.process_index() == 0
    run = build_run(cfg, workdir)
    val = validation_batches(run, workdir)  # bad data input fails here, before anything is written
    ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpoints)
    total = cfg.train.steps
    start = ckpt.latest_step()
    meta = None
    if start is None:
        state, start = run.init_state(jax.random.key(cfg.seed)), 0
    else:
        state, meta = ckpt.restore(start, run.abstract_state)
        start = int(meta["data_position"])
        log_print(f"resumed from {ckpt.directory} at step {start}", main)
    # ssd.method: which step variant runs each step (SSD or a baseline), FLOPs accounting
    name = method_of(cfg)
    method = None if name == "dense" else (SSDRun if name == "ssd" else BaselineRun)(cfg, run, meta)
    writer = MetricsWriter(workdir, enabled=main)
    if main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(run.cfg.to_json_best_effort(indent=2))
    if start == 0:
        writer.write(0, run.evaluate(state["params"], val, _eval_sparsify(run, method, state, 0)), split="eval")
    if start >= total:
        log_print(f"already trained to step {start} of {total}; nothing to do", main)
    train_it = _data().get_batches(
        cfg.data, split="train", global_batch_size=cfg.train.global_batch_size, seq_len=cfg.train.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(), start_batch=start, cache_dir=workdir,
    )
    stop = {"signal": None}
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    peak = peak_flops_per_device()
    flops, pending, t0, tokens = None, None, time.perf_counter(), 0.0

    def check(step: int, m) -> dict:
        host = jax.device_get(m)
        if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
            raise NonFiniteLoss(f"loss became {host['loss']} (grad norm {host['grad_norm']}) at step {step}")
        return host

    def aside(bucket: str, fn):
        """Runs fn() with its wall-clock charged to `bucket`, not to the next step's phase."""
        if method is None:
            return fn()
        jax.block_until_ready(state)  # the pending step's own time stays with its phase
        t = time.perf_counter()
        out = fn()
        method.account.aside(bucket, time.perf_counter() - t)
        return out

    def report(step: int, host: dict) -> None:
        nonlocal t0, tokens
        tokens += float(host["tokens"])
        if step % cfg.train.log_every and step != total:
            return
        dt = time.perf_counter() - t0
        host["tokens_per_sec"] = tokens / max(dt, 1e-9)
        host["step_time"] = dt * cfg.train.global_batch_size * cfg.train.seq_len / max(tokens, 1.0)
        if flops and peak:
            host["mfu"] = flops / host["step_time"] / (peak * jax.device_count())
        writer.write(step, host)
        log_print(progress_line(step, total, host), main)
        t0, tokens = time.perf_counter(), 0.0

    if method is not None:
        method.account.restart()
    try:
        step = start
        for step in range(start, total):
            batch = run.device_batch(next(train_it))
            if peak and flops is None and step == start:  # MFU only where the peak FLOP/s is known
                if method is None:
                    flops = _step_flops(run, batch)
                else:  # the method's step (MoE's K, PLD's expected drops) at the start step
                    flops = method.step_flops(start, lambda k: _step_flops(run, batch, k))[0]
                t0 = time.perf_counter()
            every = cfg.train.metrics_every
            top_k = method.top_k(step) if method is not None else 0
            detailed = bool(run.units is not None and every and (step + 1) % every == 0 and not top_k)
            state, metrics = run.train_step(state, batch, DENSE, detailed, top_k)
            if detailed:
                writer.write(step + 1, metrics, split="units")
            if method is not None:
                state, ssd_metrics = method.after_step(state, step + 1, lambda k: _step_flops(run, batch, k), detailed)
                log_now = (step + 1) % cfg.train.log_every == 0 or step + 1 == total
                if "ssd_ari" in ssd_metrics or "ssd_switch" in ssd_metrics or log_now:
                    writer.write(step + 1, ssd_metrics, split="ssd")
            if pending is not None:
                report(pending[0], check(*pending))
            pending = (step + 1, metrics)
            done = step + 1
            if done % cfg.train.checkpoint_every == 0 or done == total or stop["signal"]:
                report(done, check(*pending))
                pending = None
                aside("checkpoint", lambda: ckpt.save(done, state, _meta(run, done, method)))
            if done % cfg.train.eval_every == 0 and done != total:
                ev = aside("eval", lambda: run.evaluate(state["params"], val, _eval_sparsify(run, method, state, done)))
                writer.write(done, ev, split="eval")
            if stop["signal"]:
                log_print(f"received signal {stop['signal']}: saved step {done}, exiting", main)
                break
        if pending is not None:
            report(pending[0], check(*pending))
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        ckpt.close()
        writer.flush()
    final = run.evaluate(state["params"], val, _eval_sparsify(run, method, state, int(jax.device_get(state["step"]))))
    summary = {"step": int(jax.device_get(state["step"])), "workdir": os.path.abspath(workdir), **final}
    summary = {k: np.asarray(v).tolist() for k, v in summary.items()}
    if method is not None:
        summary["ssd"] = method.meta()
    writer.write(summary["step"], final, split="eval")
    writer.close()
    if main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary

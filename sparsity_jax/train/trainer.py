"""The training loop: data → jitted train step → logs, evaluation and checkpoints.

Exactness of resume: the checkpoint holds the train state and the data position (global
batches consumed); the data iterator is deterministic and restarts at that position, and
the compiled step is the same, so a resumed run reproduces the uninterrupted losses.
Metrics of step s are fetched after step s+1 is dispatched (no pipeline stall); before a
checkpoint they are checked synchronously, so a checkpoint is only written after a
finite loss and gradient norm. Evaluations, checkpoint saves, metric writes and the
compilation of each step variant wait for the steps in flight and are timed apart
(`aside`): the logged tokens/s and step time count the training steps alone
(`runtime.logs.StepTimer`). NaN/inf stops the run with the step number (exit 3) and
keeps the last good checkpoint. SIGTERM (preemption) on any process makes every process
save the same step and exit 0, without a final evaluation (`train/preemption.py`).
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from sparsity_jax.errors import NonFiniteLoss, UserError
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.settings import Settings
from sparsity_jax.runtime import names
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.logs import MetricsWriter, StepTimer, log_print, progress_line
from sparsity_jax.devices.hardware import peak_flops_per_device
from sparsity_jax.runtime.trained import data_module, real_tokens, validation_batches
from sparsity_jax.runtime.workdir import PathLike, Workdir, write_json
from sparsity_jax.train.init_from import restore_params
from sparsity_jax.train.preemption import Preemption
from sparsity_jax.train.resume import resume_point
from sparsity_jax.train.setup import MethodFactory, TrainRun, build_run

OWN_FFN = Sparsify()  # the model's own FFN settings; the method's options start from them


def _meta(run: TrainRun, step: int, method) -> dict:
    return {"data_position": int(step), "step": int(step), "config": run.settings.to_dict(), "method": method.meta()}


def train(settings: Settings, workdir: PathLike | Workdir, make_method: MethodFactory,
          init_from: PathLike | None = None) -> dict[str, Any]:
    """Trains `settings` in `workdir` (local or any epath) with the training method
    `make_method(settings, mesh)` (e.g. `methods.make_method`, the command's choice), resuming
    from its latest checkpoint; returns the final summary. Every input (data, checkpoint,
    model shape) is checked before anything is written. `init_from`: a fresh run starts
    from that run's parameters (`train.init_from`)."""
    if settings.data.all_validation:
        raise UserError("data.val_permille=1000 makes all of the text validation and leaves nothing to train on; "
                        "lower it (e.g. to 20).")
    main = jax.process_index() == 0
    t = settings.train
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    run = build_run(settings, workdir, make_method)
    val = validation_batches(run, workdir)
    resumed = resume_point(settings, workdir, run)
    start, state, meta = resumed if resumed else (0, None, None)
    total = t.steps
    train_it = data_module().get_batches(
        settings.data, split="train", global_batch_size=t.global_batch_size, seq_len=t.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(), start_batch=start,
        cache_dir=str(workdir))
    first = next(train_it) if start < total else None  # an empty train split fails here, before any write
    method = run.method.host(run, meta)  # the host side (`methods.base.TrainingMethod`)
    log_print(f"validation: {real_tokens(val):,} real tokens in {len(val)} batches of {t.global_batch_size} × "
              f"{t.seq_len}", main)
    if resumed:
        log_print(f"resumed from {workdir} at step {start}", main)
    else:
        state = run.init_state(jax.random.key(settings.seed))
        if init_from is not None:
            state = {**state, "params": restore_params(init_from, run.abstract_params)}
    ckpt = Checkpointer(workdir, keep=t.keep_checkpoints, async_save=t.async_checkpoints)
    writer = MetricsWriter(workdir, enabled=main)
    if main:
        write_json(workdir.config, settings.to_dict())
    if start == 0:
        writer.write(0, run.evaluate(state["params"], val, method.eval_sparsify(state, 0)), split=names.EVAL)
    if start >= total:
        log_print(f"already trained to step {start} of {total}; nothing to do", main)
    peak = peak_flops_per_device()
    flops, pending, timer, compiled = None, None, StepTimer(), set()

    def check(step: int, m) -> dict:
        host = jax.device_get(m)
        if not (np.isfinite(host[names.LOSS]) and np.isfinite(host[names.GRAD_NORM])):
            raise NonFiniteLoss(f"loss became {host[names.LOSS]} (grad norm {host[names.GRAD_NORM]}) at step {step}")
        return host

    def aside(bucket: str, fn):
        """Runs fn() with its wall-clock charged to `bucket` (`names.ASIDE`, or "compile"), left
        out of the steps' phase and of the logged tokens/s and step time."""
        jax.block_until_ready(state)  # the pending step's own time stays with the steps
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        method.account.aside(bucket, seconds)
        timer.aside(seconds)
        return out

    def report(step: int, host: dict) -> None:
        timer.step(float(host[names.TOKENS]))
        if step % t.log_every and step != total:
            return
        host.update(timer.rates())
        if flops and peak:
            host[names.MFU] = flops / host[names.STEP_TIME] / (peak * jax.device_count())
        timer.restart()
        aside("log", lambda: (writer.write(step, host), log_print(progress_line(step, total, host), main)))

    method.account.restart()
    preempted = False
    try:
        with Preemption() as preemption:
            for step in range(start, total):
                batch = run.device_batch(first if step == start else next(train_it))
                if peak and flops is None and step == start:  # MFU only where the peak FLOP/s is known
                    flops = method.step_flops(start)[0]  # the FLOPs of the method's step
                    timer.restart()
                variant = method.variant(step)
                if variant in compiled:
                    state, metrics = run.train_step(state, batch, OWN_FFN, variant)
                else:  # the first call compiles, then dispatches
                    state, metrics = aside("compile", lambda: run.train_step(state, batch, OWN_FFN, variant))
                    compiled.add(variant)
                if "detailed" in metrics:
                    detailed = metrics.pop("detailed")
                    aside("log", lambda: writer.write(step + 1, detailed, split=names.UNITS))
                state, method_metrics = method.after_step(state, step + 1, variant)
                if method_metrics:  # at the log interval, or an event of the method
                    aside("log", lambda: writer.write(step + 1, method_metrics, split=names.METHOD))
                if pending is not None:
                    report(pending[0], check(*pending))
                pending = (step + 1, metrics)
                done = step + 1
                preempted = preemption.reached(done)
                if done % t.checkpoint_every == 0 or done == total or preempted:
                    report(done, check(*pending))
                    pending = None
                    aside("checkpoint", lambda: ckpt.save(done, state, _meta(run, done, method)))
                if preempted:
                    log_print(f"process {jax.process_index()}: preempted (SIGTERM): saved step {done} on every "
                              "process, exiting")
                    break
                if done % t.eval_every == 0 and done != total:
                    ev = aside("eval", lambda: run.evaluate(state["params"], val, method.eval_sparsify(state, done)))
                    writer.write(done, ev, split=names.EVAL)
            if pending is not None:
                report(pending[0], check(*pending))
    finally:
        ckpt.close()
        writer.flush()
    step_now = int(jax.device_get(state["step"]))
    summary = {"step": step_now, "workdir": str(workdir)}
    if preempted:  # the grace period is short: no final evaluation
        summary["preempted"] = True
    else:
        final = run.evaluate(state["params"], val, method.eval_sparsify(state, step_now))
        writer.write(step_now, final, split=names.EVAL)
        summary.update({k: np.asarray(v).tolist() for k, v in final.items()})
    summary["method"] = method.meta()
    writer.close()
    if main:
        write_json(workdir.summary, summary)
    return summary

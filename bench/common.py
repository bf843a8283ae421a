"""Shared benchmark helpers: build a run on synthetic batches and time its train step."""
from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.methods import Variant, make_method  # noqa: E402
from sparsity_jax.nn.sparsify import Sparsify  # noqa: E402
from sparsity_jax.settings import load  # noqa: E402
from sparsity_jax.train.setup import build  # noqa: E402
from tests.train.helpers import synthetic_batch  # noqa: E402


def make(overrides: dict, vocab: int = 259):
    settings = load("configs/default.py", {k: str(v) for k, v in overrides.items()})
    run = build(settings, vocab, make_method)
    state = run.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    t = settings.train
    batch = run.device_batch(synthetic_batch(rng, t.global_batch_size, t.seq_len, vocab))
    return settings, run, state, batch


def compiled_stats(run, state, batch, detailed: bool = False) -> dict:
    """FLOPs, bytes accessed (XLA cost analysis) and peak memory of the compiled step."""
    compiled = run.train_step.lower(state, batch, Sparsify(), Variant(detailed=detailed)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
            "peak_bytes": peak}


def time_steps(run, state, batch, steps: int = 20, warmup: int = 3) -> tuple[float, object]:
    """Median seconds per train step (after `warmup` steps, compile included there)."""
    sp = Sparsify()
    for _ in range(warmup):
        state, m = run.train_step(state, batch, sp)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = run.train_step(state, batch, sp)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), state

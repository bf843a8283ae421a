"""Train-step cost of the layer-patterns metrics (per-token / per-sequence / per-batch
use, percentiles, turn-on/off tracking) computed every step, vs recording off.

Prints the step-time ratio metrics-every-step / off (target ≤ 1.05), and the compiled
steps' FLOPs, bytes-accessed and peak-memory ratios (load-independent):
    .venv/bin/python bench/metrics_overhead.py [model.d_ff=2048 ...]
Rounds alternate between the variants so machine noise hits both.
"""
import sys

import jax
import numpy as np

from common import compiled_stats, make
from sparsity_jax.methods import Variant
from sparsity_jax.nn.sparsify import Sparsify


def timed(run, state, batch, detailed, steps=10):
    import time

    state, m = run.train_step(state, batch, Sparsify(), Variant(detailed=detailed))
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = run.train_step(state, batch, Sparsify(), Variant(detailed=detailed))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), state


def main(argv):
    overrides = dict(a.split("=", 1) for a in argv)
    variants = {"off": ({"train.record": "none", "train.metrics_every": 0}, False),
                "every step": ({"train.record": "mask", "train.metrics_every": 1}, True)}
    built = {name: (make({**overrides, **o}), detailed) for name, (o, detailed) in variants.items()}
    stats = {name: compiled_stats(*b[0][1:], detailed=b[1]) for name, b in built.items()}
    times = {name: [] for name in variants}
    states = {name: b[0][2] for name, b in built.items()}
    for _ in range(5):
        for name, ((cfg, run, _, batch), detailed) in built.items():
            t, states[name] = timed(run, states[name], batch, detailed)
            times[name].append(t)
    off, on = np.median(times["off"]), np.median(times["every step"])
    print(f"device: {jax.devices()[0].device_kind}, model: {cfg.model}")
    print(f"step time  off {1e3 * off:.2f} ms   metrics every step {1e3 * on:.2f} ms")
    print(f"step-time ratio (metrics every step / off): {on / off:.3f}   (target <= 1.05)")
    ratio = {k: stats["every step"][k] / stats["off"][k] for k in ("flops", "bytes", "peak_bytes") if stats["off"][k]}
    print("compiled step, every step / off (XLA cost analysis; independent of machine load): "
          + "   ".join(f"{k} {v:.3f}" for k, v in ratio.items()))


if __name__ == "__main__":
    main(sys.argv[1:])

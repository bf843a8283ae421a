"""Training throughput: tokens/s and MFU (model FLOPs from XLA's cost analysis of the
compiled step, over the device's peak bf16 FLOP/s; MFU is n/a on CPU).

    .venv/bin/python bench/train_throughput.py [model.d_model=512 model.dtype=bfloat16 ...]
"""
import sys

import jax

from common import compiled_stats, make, time_steps
from sparsity_jax.devices.hardware import peak_flops_per_device


def main(argv):
    overrides = dict(a.split("=", 1) for a in argv)
    cfg, run, state, batch = make(overrides)
    stats = compiled_stats(run, state, batch)
    t, _ = time_steps(run, state, batch, steps=20)
    tokens = cfg.train.global_batch_size * cfg.train.seq_len
    peak = peak_flops_per_device()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, model: {run.model_cfg}")
    print(f"step time {1e3 * t:.2f} ms, {tokens / t:,.0f} tokens/s, {stats['flops'] / t / 1e12:.2f} TFLOP/s")
    if peak:
        print(f"MFU: {stats['flops'] / t / (peak * jax.device_count()):.3f}  (peak {peak / 1e12:.0f} TFLOP/s per device)")
    else:
        print("MFU: n/a (unknown peak FLOP/s for this device)")


if __name__ == "__main__":
    main(sys.argv[1:])

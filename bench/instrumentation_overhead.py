"""Train-step cost of recording hidden-unit masks (per-layer activation ratio every step).

Prints the step-time ratio recording-on / recording-off (target ≤ 1.05) and the
compiled peak-memory ratio (target ≤ 1.10), for the default model or overrides:

    .venv/bin/python bench/instrumentation_overhead.py [model.d_ff=2048 ...]
Steps alternate between the two variants in rounds so that machine noise hits both.
"""
import sys

import numpy as np

from common import compiled_stats, make, time_steps


def main(argv):
    overrides = dict(a.split("=", 1) for a in argv)
    results = {}
    for record in ("none", "mask"):
        cfg, run, state, batch = make({**overrides, "train.record": record, "train.metrics_every": 0})
        results[record] = {"run": run, "state": state, "batch": batch, "times": [], **compiled_stats(run, state, batch)}
    for _ in range(5):
        for record, r in results.items():
            t, r["state"] = time_steps(r["run"], r["state"], r["batch"], steps=10, warmup=1)
            r["times"].append(t)
    off, on = results["none"], results["mask"]
    t_off, t_on = np.median(off["times"]), np.median(on["times"])
    print(f"device: {__import__('jax').devices()[0].device_kind}, model: {cfg.model}")
    print(f"step time  record=none {1e3 * t_off:.2f} ms   record=mask {1e3 * t_on:.2f} ms")
    print(f"step-time ratio (on/off): {t_on / t_off:.3f}   (target <= 1.05)")
    if off["peak_bytes"] and on["peak_bytes"]:
        print(f"compiled peak memory  off {off['peak_bytes'] / 2**20:.1f} MiB   on {on['peak_bytes'] / 2**20:.1f} MiB")
        print(f"peak-memory ratio (on/off): {on['peak_bytes'] / off['peak_bytes']:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main(sys.argv[1:])

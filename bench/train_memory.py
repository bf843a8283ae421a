"""Memory of one train step per remat policy, scanned and unrolled, and the compile time
of scanned vs unrolled blocks, at the ReLU² Wins 1.3B shape (`configs/relu2/1p3b.py:relu2`:
d = 2048, 24 layers, F = 8192, bf16, fsdp = 8), compile-only on 8 fake CPU devices
(`train.dry_run`: XLA's memory and cost analysis of the compiled step, nothing allocated).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONPATH=. \\
        nice python bench/train_memory.py [--layers 24] [--grad-accum 4] [--unrolled-policies none,full]

Targets (issue 21): `full` remat's temporary bytes ≤ 0.35 × `none`'s at the config's
sequence length and at 6 layers × 32 × 1024 tokens; scanned compile time ≤ 0.4 ×
unrolled; the 24-layer config fits 8 devices of 95 GiB (v5p) at the paper's global
batch (1024 × 2048) with the gradient accumulation given. Prints one line per compile
and a summary of the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax import settings as settings_mod  # noqa: E402
from sparsity_jax.methods import make_method  # noqa: E402
from sparsity_jax.train.dry_run import GIB, dry_run  # noqa: E402

CONFIG = "configs/relu2/1p3b.py:relu2"
POLICIES = ("none", "dots", "ffn", "full")


def measure(overrides: dict[str, str], label: str) -> dict:
    st = settings_mod.load(CONFIG, {k: str(v) for k, v in overrides.items()})
    r = dry_run(st, make_method, device="v5p")
    row = dict(label=label, **overrides, **r.to_json())
    print(f"{label:44s} temp {r.temp_bytes_per_device / GIB:8.2f} GiB  peak {r.peak_bytes_per_device / GIB:8.2f} GiB"
          f"  args {r.argument_bytes_per_device / GIB:6.2f} GiB  FLOPs/step {r.flops_per_step:.3e}"
          f"  compile {r.compile_seconds:7.1f} s  fits v5p: {r.fits}", flush=True)
    print("  " + json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--unrolled-policies", default="none,full", help="policies also compiled unrolled (slow)")
    p.add_argument("--skip-small", action="store_true")
    a = p.parse_args()
    base = {"model.num_layers": a.layers, "train.grad_accum": a.grad_accum, "mesh.fsdp": 8, "mesh.data": 1}
    print(f"{CONFIG} at {a.layers} layers, global batch 1024 x 2048, grad_accum {a.grad_accum} "
          f"(micro-batch {1024 // a.grad_accum} rows, {1024 // a.grad_accum // 8} per device), fsdp=8", flush=True)
    rows = {}
    for scan in (True, False):
        for policy in POLICIES:
            if not scan and policy not in a.unrolled_policies.split(","):
                continue
            label = f"{'scanned' if scan else 'unrolled'} remat={policy}"
            rows[(scan, policy)] = measure({**base, "model.scan_layers": scan, "model.remat": policy}, label)
    small = {}
    if not a.skip_small:
        print("6 layers, global batch 32 x 1024 tokens, grad_accum 1, fsdp=8", flush=True)
        for policy in ("none", "full"):
            small[policy] = measure({"model.num_layers": 6, "train.global_batch_size": 32, "train.seq_len": 1024,
                                     "mesh.fsdp": 8, "mesh.data": 1, "model.scan_layers": True, "model.remat": policy},
                                    f"6 layers scanned remat={policy}")
    print("summary", flush=True)
    for scan in (True, False):
        if (scan, "none") in rows and (scan, "full") in rows:
            ratio = rows[(scan, "full")]["temp_bytes_per_device"] / rows[(scan, "none")]["temp_bytes_per_device"]
            print(f"  full / none temporary bytes, {'scanned' if scan else 'unrolled'}, {a.layers} layers x 2048: "
                  f"{ratio:.3f} (target <= 0.35)")
    if small:
        print(f"  full / none temporary bytes, 6 layers x 32 x 1024: "
              f"{small['full']['temp_bytes_per_device'] / small['none']['temp_bytes_per_device']:.3f} (target <= 0.35)")
    for policy in POLICIES:
        if (True, policy) in rows and (False, policy) in rows:
            print(f"  compile seconds scanned / unrolled, remat={policy}: {rows[(True, policy)]['compile_seconds']:.1f} / "
                  f"{rows[(False, policy)]['compile_seconds']:.1f} = "
                  f"{rows[(True, policy)]['compile_seconds'] / rows[(False, policy)]['compile_seconds']:.3f} (target <= 0.4)")
    fitting = [r["label"] for r in rows.values() if r["fits"]]
    print(f"  fits 8 x v5p (95 GiB) at global batch 1024 x 2048, grad_accum {a.grad_accum}: "
          f"{', '.join(fitting) or 'none of them'}")


if __name__ == "__main__":
    main()

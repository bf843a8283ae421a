"""CETT threshold search: ours (`find_threshold`) vs the reference algorithm.

Reference (ReLU² App. C public code): 65,536 candidate thresholds on a linspace from
the smallest magnitude to the 0.99-quantile of all magnitudes, bisection over them with
16 evaluations of the truncated W_out product. Both run jitted on the same device, over
all layers and targets in one call, and share the truncated-product code (one
evaluation = (a · 1[‖n‖ < t]) @ w_out on N×F×d). Prints per data kind: evaluations
per layer and target, median wall time after compile, realised CETT, and the speed
ratio; the last line is the overall ratio.

    .venv/bin/python bench/cett_search.py [--layers 3 --tokens 8192 --ffn 1024 --d 256 --runs 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.metrics.cett import layer_magnitudes, prepare_layer, truncated  # noqa: E402
from sparsity_jax.metrics.reduce import safe_div  # noqa: E402
from sparsity_jax.metrics.threshold_search import find_threshold  # noqa: E402

CANDIDATES, BISECTION_STEPS = 65_536, 16


@jax.jit
def reference_search(a_LxNxF, w_out_LxFxD, targets_K):
    """The reference algorithm: (thresholds (L, K), CETT (L, K)); 16 evaluations each."""
    mask_N = jnp.ones(a_LxNxF.shape[1], bool)

    def one_layer(a_NxF, w_out_FxD):
        layer = prepare_layer(a_NxF, w_out_FxD, mask_N)
        mag = layer_magnitudes(layer).reshape(-1)
        cand_C = jnp.linspace(jnp.min(mag), jnp.quantile(mag, 0.99), CANDIDATES)
        counted = jnp.sum(layer.inv_norm_N > 0)  # real tokens with FFN output ≠ 0
        c_at = lambda t: safe_div(truncated(layer, t)[0], counted)  # noqa: E731

        def one_target(target):
            def bisect(_, lo_hi):
                lo, hi = lo_hi
                mid = (lo + hi) // 2
                ok = c_at(cand_C[mid]) <= target
                return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

            lo, _ = lax.fori_loop(0, BISECTION_STEPS, bisect, (jnp.int32(0), jnp.int32(CANDIDATES - 1)))
            return cand_C[lo], c_at(cand_C[lo])

        return lax.map(one_target, targets_K)

    return jax.vmap(one_layer)(a_LxNxF, w_out_LxFxD)


@jax.jit
def one_evaluation(a_LxNxF, w_out_LxFxD):
    """One truncated product per layer (the unit both searches count), for scale."""
    t_L = jnp.quantile(jnp.abs(a_LxNxF[:, :64]), 0.5, axis=(1, 2))
    def product(a_NxF, w_out_FxD, t):
        return jnp.matmul(jnp.where(jnp.abs(a_NxF) < t, a_NxF, 0.0), w_out_FxD, precision="highest")

    return jax.vmap(product)(a_LxNxF, w_out_LxFxD, t_L)


def make_data(kind: str, layers: int, tokens: int, ffn: int, d: int, seed: int = 0):
    """Random activation scores (L, N, F) of ReLU-like or SiLU-gated FFNs and w_out (L, F, d)."""
    rng = np.random.default_rng(seed)
    a, w = [], []
    for _ in range(layers):
        x = rng.standard_normal((tokens, d), np.float32)
        h = x @ (rng.standard_normal((d, ffn), np.float32) / np.sqrt(d))
        if kind == "relu":
            a.append(np.maximum(h + rng.normal(0, 0.3, ffn).astype(np.float32), 0))
        else:
            g = x @ (rng.standard_normal((d, ffn), np.float32) / np.sqrt(d))
            a.append(g / (1 + np.exp(-g)) * h)
        scale = rng.lognormal(0, 0.5, (ffn, 1)).astype(np.float32)
        w.append(rng.standard_normal((ffn, d), np.float32) / np.sqrt(ffn) * scale)
    return jnp.asarray(np.stack(a)), jnp.asarray(np.stack(w))


def median_time(fn, runs: int) -> tuple[float, object]:
    out = jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    targets = jnp.asarray(args.targets, jnp.float32)
    print(f"device: {jax.devices()[0].device_kind}; L={args.layers} N={args.tokens} F={args.ffn} d={args.d} "
          f"targets={args.targets}; median of {args.runs} runs after compile")
    total_ours = total_ref = 0.0
    for kind in ("relu", "silu-gated"):
        a, w = make_data(kind, args.layers, args.tokens, args.ffn, args.d)
        t_ours, ours = median_time(lambda: find_threshold(a, w, targets[None]), args.runs)
        t_ref, (ref_t, ref_c) = median_time(lambda: reference_search(a, w, targets), args.runs)
        total_ours, total_ref = total_ours + t_ours, total_ref + t_ref
        t_eval, _ = median_time(lambda: one_evaluation(a, w), args.runs)
        print(f"\n[{kind}]  (rows: layers, columns: targets); one truncated product, all layers: {t_eval * 1e3:.2f} ms")
        print(f"  ours evaluations      {np.asarray(ours.evaluations).tolist()}"
              "  (+1 dense product per layer, exact finish)")
        print(f"  reference evaluations {BISECTION_STEPS} each (+1 dense product, 0.99-quantile sort)")
        print(f"  ours CETT             {np.round(np.asarray(ours.realised_cett, np.float64), 6).tolist()}")
        print(f"  reference CETT        {np.round(np.asarray(ref_c, np.float64), 6).tolist()}")
        print(f"  ours max |CETT - target| = {float(jnp.max(jnp.abs(ours.realised_cett - targets))):.2e}, "
              f"reference = {float(jnp.max(jnp.abs(ref_c - targets))):.2e}")
        print(f"  wall time: ours {t_ours * 1e3:.1f} ms, reference {t_ref * 1e3:.1f} ms, "
              f"speed-up {t_ref / t_ours:.2f}x")
    print(f"\nSPEED RATIO reference/ours = {total_ref / total_ours:.2f}x "
          f"(ours {total_ours * 1e3:.1f} ms, reference {total_ref * 1e3:.1f} ms, both kinds)")


if __name__ == "__main__":
    main()

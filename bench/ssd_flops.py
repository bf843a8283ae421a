"""SSD sparse-phase FFN cost: MoE (capacity dispatch) vs dense, FLOPs and wall-clock.

The FFN of the tiny SSD shape (d=128, F=1024, N=32 experts, K=6, 4096 tokens; override
with key=value args) under one "train step" = forward + backward of a sum loss w.r.t.
the kernels AND the input (as inside an LM). Prints, from XLA's cost analysis,

    sparse-phase FFN FLOPs / dense FFN FLOPs     (target <= 1.3 · K/N)

for the trainer's default constant gates (`method.router_grad=false`) and for SSD App. A's
straight-through router gradient (`router_grad=true`), with the ideal split (experts:
capacity_factor · K/N; router: the selection x·cᵀ for all N experts, 2·S·N·d, that is
2N/(6·n_mats·F) with n_mats = 2, or 3 gated; the router gradient adds the slot gates'
backward dx_nc = g_nc·c_n, dc_n = Σ_c g_nc·x_nc, 3·cf·S·K·d; see `nn/moe._slot_gates`),
the compiled memory of both steps (XLA's memory analysis: temp buffers, and peak =
arguments + outputs + temp − aliased) with the sparse/dense peak-memory ratio,
and the measured median wall-clock ratio of the two compiled steps on this machine
(target: sparse faster). Rounds alternate between the variants so noise hits both.
The ragged path's FLOPs are printed for information: on CPU XLA lowers ragged_dot to a
dense product over all groups, so it is not a sparse path there (it is on TPU/GPU).
Last, when the workdir `run` (default runs/ssd_tiny, trained with configs/ssd/tiny.py:ssd)
exists, the whole-run FLOPs speed-up of that run from its logs (`bench/ssd_run.py`,
target >= 1.4x at r = 0.5, K/N = 6/32; the paper's 1.44x).

    .venv/bin/python bench/ssd_flops.py [d=128 F=1024 N=32 K=6 tokens=4096 cf=1.25 act=relu run=runs/ssd_tiny]
"""
from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.nn.ffn import FFN  # noqa: E402
from sparsity_jax.nn.moe import centres_from_kernel, moe_ffn  # noqa: E402

DEFAULTS = dict(d=128, F=1024, N=32, K=6, tokens=4096, cf=1.25, act="relu", run="runs/ssd_tiny")


def make_step(graphdef, mode: str, opts: dict, router_grad: bool = False):
    """jitted (params, x, centres) -> (loss, grads wrt params and x)."""

    def loss(params, x_SxD, centres_NxD):
        ffn = nnx.merge(graphdef, params)
        if mode == "dense":
            y_SxD = ffn(x_SxD)
        else:
            y_SxD = moe_ffn(ffn.kernels(), ffn.activate, x_SxD, centres_NxD, dispatch=mode, router_grad=router_grad,
                            **opts)[0]
        return jnp.sum(y_SxD)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def ffn_gated(graphdef, params) -> bool:
    return nnx.merge(graphdef, params).act.gated


def flops(step, *args) -> float:
    """XLA cost analysis of the lowered HLO (XLA:GPU's compiled analysis omits cuBLAS calls)."""
    cost = step.lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def memory(step, *args) -> dict:
    """Compiled memory of a step (XLA's memory analysis): temp buffers and the peak
    estimate arguments + outputs + temp − aliased."""
    m = step.lower(*args).compile().memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"temp": float(m.temp_size_in_bytes), "peak": float(peak)}


def median_time(step, args, reps: int = 10) -> float:
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv):
    cfg = dict(DEFAULTS)
    for a in argv:
        key, val = a.split("=", 1)
        cfg[key] = type(DEFAULTS[key])(val)
    d, f, n, k = cfg["d"], cfg["F"], cfg["N"], cfg["K"]
    graphdef, params = nnx.split(FFN(d, f, cfg["act"], rngs=nnx.Rngs(0)))
    x_SxD = jax.random.normal(jax.random.key(1), (cfg["tokens"], d))
    centres_NxD = centres_from_kernel(params["w_in"][...], n)
    opts = dict(num_experts=n, top_k=k, capacity_factor=cfg["cf"])
    args = (params, x_SxD, centres_NxD)
    steps = {mode: make_step(graphdef, mode, opts) for mode in ("dense", "capacity", "ragged")}
    fl = {mode: flops(step, *args) for mode, step in steps.items()}
    fl["capacity+router_grad"] = flops(make_step(graphdef, "capacity", opts, router_grad=True), *args)
    mem = {mode: memory(steps[mode], *args) for mode in ("dense", "capacity")}
    def moe_aux(p, x, c):
        ffn = nnx.merge(graphdef, p)
        return moe_ffn(ffn.kernels(), ffn.activate, x, c, **opts)[1]

    aux = jax.jit(moe_aux)(*args)

    times = {"dense": [], "capacity": []}
    for _ in range(5):
        for mode in times:
            times[mode].append(median_time(steps[mode], args))
    t_dense, t_sparse = np.median(times["dense"]), np.median(times["capacity"])

    kn = k / n
    print(f"device: {jax.devices()[0].device_kind}  shape: {cfg}")
    print(f"capacity C = {aux['capacity']} slots/expert, dropped pairs = {int(aux['dropped'])} "
          f"of {cfg['tokens'] * k}, max load = {int(aux['load_N'].max())}")
    print(f"FLOPs (fwd+bwd)  dense {fl['dense'] / 1e9:.3f} G   capacity {fl['capacity'] / 1e9:.3f} G   "
          f"ragged {fl['ragged'] / 1e9:.3f} G (CPU lowers ragged_dot densely)")
    ratio = fl["capacity"] / fl["dense"]
    n_mats = 3 if ffn_gated(graphdef, params) else 2  # dense fwd+bwd = 6·n_mats·S·d·F FLOPs
    ideal = cfg["cf"] * kn + 2 * n / (6 * n_mats * f)  # router: the selection x·cᵀ only
    print(f"FLOPs ratio sparse/dense: {ratio:.4f}   = {ratio / kn:.3f} × K/N   "
          f"(target <= 1.3 × K/N = {1.3 * kn:.4f}; ideal cf·K/N + router = {ideal:.4f})")
    ratio_rg = fl["capacity+router_grad"] / fl["dense"]
    ideal_rg = ideal + 3 * cfg["cf"] * k / (6 * n_mats * f)  # + the slot gates' backward
    print(f"  with the router gradient (router_grad=true, SSD App. A): {ratio_rg:.4f}   = {ratio_rg / kn:.3f} × K/N"
          f"   (ideal {ideal_rg:.4f})")
    print(f"compiled memory (fwd+bwd)  dense temp {mem['dense']['temp'] / 1e6:.2f} MB peak {mem['dense']['peak'] / 1e6:.2f} MB"
          f"   capacity temp {mem['capacity']['temp'] / 1e6:.2f} MB peak {mem['capacity']['peak'] / 1e6:.2f} MB")
    print(f"peak-memory ratio sparse/dense: {mem['capacity']['peak'] / mem['dense']['peak']:.3f}   "
          f"temp-memory ratio: {mem['capacity']['temp'] / max(mem['dense']['temp'], 1.0):.3f}")
    print(f"step time  dense {1e3 * t_dense:.2f} ms   sparse {1e3 * t_sparse:.2f} ms")
    print(f"wall-clock ratio sparse/dense: {t_sparse / t_dense:.3f}   (target < 1; speed-up {t_dense / t_sparse:.2f}×)")
    if os.path.isfile(os.path.join(cfg["run"], "metrics.jsonl")):
        from bench.ssd_run import report

        print(report(cfg["run"]))
    else:
        print(f"no run in {cfg['run']}: train configs/ssd/tiny.py:ssd there for the whole-run FLOPs speed-up")


if __name__ == "__main__":
    main(sys.argv[1:])

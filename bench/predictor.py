"""Activation predictors (ReLU² §5.2, App. A.2): their cost next to the FFN's, and memory of co-activation.

Per model shape (the tiny ReLU² configs and the paper's 1.3B ones), with the rank of a
4% parameter share:
  * the predictor's share of the FFN's FLOPs per token: analytic r·(d + F) + F (bias)
    multiply-adds against n_mats·d·F, and the same ratio from XLA cost analysis of the
    jitted dense FFN forward vs the jitted predictor (scores and the threshold keep-mask)
    on the same tokens (count on XLA:CPU, which counts every dot; target ≤ 5%);
  * predictor training time: seconds per step of all L layers at once, and per layer, on
    synthetic inputs and labels (minibatch `--tokens`; timed after the first step).
Then the compiled memory of `metrics.coactivation` on F = 4096 over 64k tokens (chunked:
O(F²) counts + one token block) against the (T, F) mask it reads.

    JAX_PLATFORMS=cpu .venv/bin/python bench/predictor.py [--steps 50 --tokens 1024]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.metrics.affinity import coactivation  # noqa: E402
from sparsity_jax.nn.ffn import FFN  # noqa: E402
from sparsity_jax.predict import lowrank as pm  # noqa: E402
from sparsity_jax.predict.data import TokenSet  # noqa: E402
from sparsity_jax.predict.train import train_predictors  # noqa: E402
from sparsity_jax.devices.sharding import make_mesh  # noqa: E402

# name: (d, F, activation, layers)
SHAPES = {
    "tiny relu2 (configs/relu2/tiny.py)": (128, 512, "relu2", 4),
    "tiny swiglu (configs/relu2/tiny.py)": (128, 336, "swiglu", 4),
    "1.3B relu2 (ReLU² App. A.3)": (2048, 8192, "relu2", 24),
    "1.3B swiglu (ReLU² App. A.3)": (2048, 5376, "swiglu", 24),
}


def flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def flop_shares(d: int, f: int, activation: str, tokens: int) -> tuple[int, float, float]:
    """(rank, analytic share, XLA cost-analysis share) of one layer's predictor vs its FFN."""
    n_mats = pm.ffn_matrices(activation)
    rank = pm.rank_for_share(d, f, n_mats, 0.04)
    analytic = pm.parameter_count(d, f, rank, True) / (n_mats * d * f)
    graph, ffn_params = nnx.split(FFN(d, f, activation, rngs=nnx.Rngs(0)), nnx.Param)
    params = pm.init_params(jax.random.key(0), 1, d, f, rank)
    one = {k: v[0] for k, v in params.items()}
    x = jax.ShapeDtypeStruct((1, tokens, d), jnp.float32)
    ffn_flops = flops(lambda p, x: nnx.merge(graph, p)(x), ffn_params, x)
    pred_flops = flops(lambda q, x: pm.spec({k: v[None] for k, v in q.items()}).for_layer(0).keep(x), one, x)
    return rank, analytic, pred_flops / ffn_flops


def train_seconds(d: int, f: int, activation: str, layers: int, steps: int, tokens: int) -> tuple[float, float]:
    """(seconds per step for all layers, compile + first step) on synthetic data."""
    n = max(4 * tokens, 4096)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(layers, n, d)).astype(np.float32)
    labels = rng.uniform(size=(layers, n, f)) < 0.1
    rank = pm.rank_for_share(d, f, pm.ffn_matrices(activation), 0.04)
    cfg = pm.PredictorConfig(steps=steps, batch_tokens=tokens)
    _, info = train_predictors(TokenSet(x, labels), cfg, rank, make_mesh(data=-1))
    return info.seconds / max(steps - 1, 1), info.compile_seconds


def coactivation_memory(f: int = 4096, tokens: int = 65536, batch: int = 32) -> None:
    mask = jax.ShapeDtypeStruct((batch, tokens // batch, f), jnp.bool_)
    real = jax.ShapeDtypeStruct((batch, tokens // batch), jnp.bool_)
    compiled = jax.jit(lambda m, t: coactivation(m, t).counts).lower(mask, real).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        print("co-activation: no compiled memory analysis on this backend")
        return
    gib = 2.0**30
    print(f"co-activation, F = {f}, {tokens:,} tokens ({batch} × {tokens // batch}), chunk 1024 tokens: "
          f"temp {mem.temp_size_in_bytes / gib:.3f} GiB, arguments {mem.argument_size_in_bytes / gib:.3f} GiB, "
          f"outputs {mem.output_size_in_bytes / gib:.3f} GiB; the F × F int32 counts are {f * f * 4 / gib:.3f} GiB, "
          f"a (T, F, F) product would be {tokens * f * f / gib:,.0f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="timed predictor training steps")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per predictor minibatch")
    ap.add_argument("--flop-tokens", type=int, default=256, help="tokens of the cost-analysis calls")
    ap.add_argument("--skip-large-training", action="store_true", help="time training on the tiny shapes only")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): "
          f"{jax.devices()[0].device_kind}")
    print("shape | d | F | rank | analytic FLOPs share | XLA FLOPs share | train s/step (L layers) | s/step/layer "
          "| compile s")
    for name, (d, f, act, layers) in SHAPES.items():
        rank, analytic, xla = flop_shares(d, f, act, args.flop_tokens)
        if args.skip_large_training and d > 512:
            step_s = per_layer = first = float("nan")
        else:
            step_s, first = train_seconds(d, f, act, layers, args.steps, args.tokens)
            per_layer = step_s / layers
        print(f"{name} | {d} | {f} | {rank} | {analytic:.4f} | {xla:.4f} | {step_s:.5f} ({layers}) | "
              f"{per_layer:.5f} | {first:.2f}")
    coactivation_memory()


if __name__ == "__main__":
    main()

"""Sparse decoding: FFN time and whole decode-step time, sparse / dense, on this machine.

Synthetic part: an FFN-heavy LM (default d = 1024, F = 8192, 4 layers, ReLU², random
weights, byte vocabulary) decoded with the `threshold` and `predictor` choosers at
planted active shares. Threshold: per-layer thresholds at the (1 − share)-quantile of
the neuron magnitudes |a|·‖W_out‖ of Gaussian FFN inputs (RMSNorm outputs are ≈ N(0, 1)
per entry). Predictor: SYNTHETIC weights (W1 (d, r), W2 (r, F) Gaussian, r = 64; b per
neuron at the (1 − share)-quantile of its logits on Gaussian inputs), so its neurons fire
independently: batch unions are a worst case, real predictors see co-activation. The
budgets come from `infer.budget.calibrate` on a random-token batch at each batch size.
"FFN" is the FFN of all layers for one decode step on Gaussian inputs; "step" is the
whole jitted decode step (attention over a 64-slot cache, head, sampling). Variants are
timed in alternating rounds (the CPU is shared) and medians reported; sparse / dense is
the speed-up (dense = the dense decode FFN in its best layout, see `infer.ffn`).
The "why" lines time the pieces of the sparse products at the 0.15 share, run first.

Trained part (--workdir): the trained model's greedy decode tokens/s, dense vs threshold
at its PPL-1% CETT (--cett, or WORKDIR/report/ppl.json, or --ppl-json), and the
validation PPL of each (the sparse PPL is the masked threshold mode's, `search.thresholds`).

    .venv/bin/python bench/sparse_decode.py [--d 1024 --ff 8192 --layers 4 --batches 1,4,16]
        [--shares 0.5,0.25,0.15,0.05] [--chunk 128] [--rounds 5] [--workdir runs/relu2_tiny --cett C]
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.infer import Decoder, Dense, Predicted, Threshold, place  # noqa: E402
from sparsity_jax.infer.budget import calibrate  # noqa: E402
from sparsity_jax.infer.choosers import Act, layer_arrays, project  # noqa: E402
from sparsity_jax.infer.ffn import CHUNK, compact, gather_combine, gather_project, layer_ffn  # noqa: E402
from sparsity_jax.nn.model import LM, ModelConfig  # noqa: E402
from sparsity_jax.runtime.sharding import make_mesh  # noqa: E402

RANK, PROMPT, NEW = 64, 16, 48


def timed(fn, *args, reps: int = 10) -> float:
    """Seconds per call of an already compiled fn (mean over `reps` back-to-back calls)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def rounds(variants: dict, n: int) -> dict[str, float]:
    """Median seconds of each variant (a zero-argument timer) over n alternating rounds."""
    times = {k: [] for k in variants}
    for _ in range(n):
        for k, fn in variants.items():
            times[k].append(fn())
    return {k: float(np.median(v)) for k, v in times.items()}


def planted(model, share: float, key) -> tuple[dict, dict]:
    """Threshold and synthetic predictor arrays that activate `share` of the neurons on Gaussian inputs."""
    cfg = model.cfg
    x_NxD = jax.random.normal(key, (4096, cfg.d_model))
    ts, w1s, w2s, bs = [], [], [], []
    for i, blk in enumerate(model.blocks):
        a = blk.ffn.activate(x_NxD @ blk.ffn.kernels()["in"])
        mag = jnp.abs(a) * blk.ffn.out_norms()
        ts.append(jnp.quantile(mag, 1 - share))
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        w1 = jax.random.normal(k1, (cfg.d_model, RANK)) / np.sqrt(cfg.d_model)
        w2 = jax.random.normal(k2, (RANK, cfg.d_ff)) / np.sqrt(RANK)
        bs.append(-jnp.quantile((x_NxD @ w1) @ w2, 1 - share, axis=0))
        w1s.append(w1)
        w2s.append(w2)
    return {"threshold": jnp.stack(ts)}, {"w1": jnp.stack(w1s), "w2": jnp.stack(w2s), "b": jnp.stack(bs)}


def ffn_timer(dec: Decoder, x_LxNxD, sparse: bool):
    """A zero-argument timer of all layers' FFNs for one decode step of `dec`."""
    model = nnx.merge(dec.graphdef, dec.params)
    acts = [Act.of(b.ffn) for b in model.blocks]
    budgets = dec.budgets if sparse else None

    @jax.jit
    def run(tables, arrays, x_LxNxD):
        ys = []
        for i, act in enumerate(acts):
            out = layer_ffn(dec.chooser, layer_arrays(arrays, i), tables[i], x_LxNxD[i], act, mesh=dec.mesh,
                            axis=dec.axis, budgets=None if budgets is None else budgets[i], chunk=dec.chunk)
            ys.append(out[0])
        return jnp.stack(ys)

    return functools.partial(timed, run, dec.tables, dec.arrays, x_LxNxD)


def step_timer(dec: Decoder, prompts):
    def go():
        g = dec.generate(prompts, NEW)
        return g.decode_s / (NEW - 1)
    return go


def why(d: int, f: int, layers: int, share: float, chunk: int, reps: int) -> dict[str, float]:
    """The pieces of the sparse products at `share`, batch 1, ms per kernel: each piece runs
    on `layers` distinct (F, d) kernels in one jit (a decode step's working set, larger
    than the cache), as the model runs them."""
    k = int(round(share * f / 32)) * 32
    key = jax.random.split(jax.random.key(3), 4)
    w_LxFxD = [jax.random.normal(jax.random.fold_in(key[0], i), (f, d)) for i in range(layers)]
    w_LxDxF = [w.T + 0 for w in w_LxFxD]
    w_LxKxD = [w[:k] + 0 for w in w_LxFxD]
    x_1xD = jax.random.normal(key[1], (1, d))
    a_1xF = jax.random.normal(key[1], (1, f))
    idx_K = jnp.sort(jax.random.choice(key[2], f, (k,), replace=False)).astype(jnp.int32)
    mask_F = jnp.zeros(f, bool).at[idx_K].set(True)

    def each(fn):
        return jax.jit(lambda ws, *rest: [fn(w, *rest) for w in ws])

    f_ = {
        "dense x·W_in (F×d rows)": (each(project), (w_LxFxD, x_1xD)),
        "dense a·W_out (d×F copy)": (each(lambda w, a: jnp.einsum("df,nf->nd", w, a)), (w_LxDxF, a_1xF)),
        "dense a·W_out (F×d, Flax layout)": (each(lambda w, a: a @ w), (w_LxFxD, a_1xF)),
        "contiguous K×d product (ideal gather)": (each(project), (w_LxKxD, x_1xD)),
        "gather K rows only (copy)": (each(lambda w, i: w.at[i].get(mode="promise_in_bounds")), (w_LxFxD, idx_K)),
        "gather + product, one gather": (each(functools.partial(gather_project, chunk=0)), (w_LxFxD, idx_K, x_1xD)),
        f"gather + product, {chunk}-row blocks": (each(functools.partial(gather_project, chunk=chunk)),
                                                  (w_LxFxD, idx_K, x_1xD)),
        "gather + combine (out), one gather": (each(lambda w, i, a: gather_combine(a, w, i, 0)),
                                               (w_LxFxD, idx_K, a_1xF[:, :k])),
        f"gather + combine (out), {chunk}-row blocks": (each(lambda w, i, a: gather_combine(a, w, i, chunk)),
                                                        (w_LxFxD, idx_K, a_1xF[:, :k])),
        "compact the active set (flatnonzero)": (each(lambda _, m: compact(m, k)), ([None] * layers, mask_F)),
    }
    ms = rounds({n: functools.partial(timed, fn, *a) for n, (fn, a) in f_.items()}, reps)
    return {n: v * 1e3 / layers for n, v in ms.items()} | {"K": k}


def synthetic(args) -> None:
    cfg = ModelConfig(vocab_size=259, d_model=args.d, num_layers=args.layers, num_heads=args.d // 128,
                      d_ff=args.ff, activation=args.activation)
    model = LM(cfg, rngs=nnx.Rngs(0))
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    graphdef, params = place(model, mesh)
    print(f"model d={args.d} F={args.ff} L={args.layers} {args.activation}, heads {cfg.num_heads}, vocab 259, "
          f"predictor rank {RANK} (synthetic), chunk {args.chunk}, prompt {PROMPT} + {NEW} new tokens, "
          f"{args.rounds} rounds; devices {jax.devices()}")
    print(f"\n== why: the sparse products' pieces at share 0.15, batch 1, on {args.layers} distinct kernels "
          f"(median of {args.rounds} rounds, ms per kernel)")
    for n, v in why(args.d, args.ff, args.layers, 0.15, args.chunk or CHUNK, args.rounds).items():
        print(f"  {n:44s} {v:8.3f}" if n != "K" else f"  K = {v} rows", flush=True)
    dense = Decoder(graphdef, params, mesh, Dense())
    rng = np.random.default_rng(0)
    for b in args.batches:
        x_LxNxD = jax.random.normal(jax.random.key(b), (args.layers, b, args.d))
        prompts = [list(rng.integers(1, 259, PROMPT)) for _ in range(b)]
        toks = jnp.asarray(rng.integers(1, 259, (max(4, b), 64)), jnp.int32)
        calib = [{"inputs": toks, "segment_ids": jnp.ones_like(toks), "loss_weights": jnp.ones(toks.shape),
                  "positions": jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), toks.shape)}]
        print(f"\n== batch {b}")
        print(f"{'chooser':10s} {'share':>6s} {'measured':>8s} {'computed':>8s} {'budgets (layer 0)':>18s} "
              f"{'overflow':>8s} {'FFN ms':>8s} {'dense':>8s} {'speed-up':>8s} {'step ms':>8s} {'dense':>8s} "
              f"{'speed-up':>8s}")
        for share in args.shares:
            thr, pred = planted(model, share, jax.random.key(7))
            for name, chooser, arrays in (("threshold", Threshold(), thr), ("predicted", Predicted(), pred)):
                dec = Decoder(graphdef, params, mesh, chooser, arrays, chunk=args.chunk)
                dec.set_budgets(calibrate(dec, calib, rows=b))
                gen = dec.generate(prompts, NEW)  # compiles; its statistics are the ones reported
                dense.generate(prompts, NEW)
                med = rounds({"ffn": ffn_timer(dec, x_LxNxD, True), "ffn_dense": ffn_timer(dense, x_LxNxD, False),
                              "step": step_timer(dec, prompts), "step_dense": step_timer(dense, prompts)},
                             args.rounds)
                st, (active_L, computed_L) = gen.stats, gen.shares(cfg.d_ff)
                print(f"{name:10s} {share:6.2f} {active_L.mean():8.3f} {computed_L.mean():8.3f} "
                      f"{str(dec.budgets[0]):>18s} {int(st['dense'].sum()):8d} "
                      f"{med['ffn'] * 1e3:8.2f} {med['ffn_dense'] * 1e3:8.2f} {med['ffn_dense'] / med['ffn']:7.2f}x "
                      f"{med['step'] * 1e3:8.2f} {med['step_dense'] * 1e3:8.2f} "
                      f"{med['step_dense'] / med['step']:7.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--ff", type=int, default=8192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--activation", default="relu2")
    p.add_argument("--shares", default="0.5,0.25,0.15,0.05")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--chunk", type=int, default=CHUNK, help="rows gathered per block (0: one gather)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", default=None, help="a trained run for the tokens/s and PPL lines")
    p.add_argument("--cett", type=float, default=None, help="its PPL-1%% CETT (default: from --ppl-json)")
    p.add_argument("--ppl-json", default=None, help="default: WORKDIR/report/ppl.json")
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args()
    args.shares = [float(s) for s in args.shares.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    print("jax", jax.__version__, "| backend", jax.default_backend(), "|", time.strftime("%Y-%m-%d %H:%M"))
    if not args.skip_synthetic:
        synthetic(args)
    if args.workdir:
        from bench.sparse_decode_trained import trained  # imports TensorFlow (the run's data)

        trained(args, rounds)


if __name__ == "__main__":
    main()

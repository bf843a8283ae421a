"""Sparse decoding against its memory bound (issue 22): FFN and whole decode-step time,
sparse / dense, with neuron gathers and with co-activation layout + block gathers.

Every row prints the BOUND = dense FFN bytes / bytes the chosen path must read (the full
W_in — and W_gate, gated — where thresholds need it, the predictor, and the rows of the
union's blocks: `read`, measured in the run) next to the measured FFN speed-up and their
ratio; batch > 1 rows also print the efficiency = dense FFN time × read share / sparse
FFN time (1 = the sparse FFN costs exactly its share of the dense one). Shares: neuron
(active per token), union (per step, over the batch), block (neurons in the blocks the
union touches, after the layout at b; = union with neuron gathers).

Synthetic part: an FFN-heavy ReLU² LM (default d 1024, F 8192, 4 layers, random weights)
with a PLANTED 0.15 share whose active sets are unions of hidden blocks of 32 neurons
scattered by a random permutation: the W_in columns of a hidden block are equal (so its
neurons cross any threshold together) and so are the synthetic predictor's W2 columns
and biases; thresholds / biases at the 0.85-quantile of Gaussian inputs. The layout
(`infer.neuron_order`, computed from candidates on calibration tokens) must find the blocks.
"FFN" is all layers' FFNs for one decode step on Gaussian inputs; "step" is the whole
jitted decode step. Variants are timed in alternating rounds (medians).

Trained part (--workdir, bench/sparse_decode_trained.py): the same rows on a trained
model at its PPL-1% CETT, thresholds and its trained predictors.

    .venv/bin/python bench/sparse_decode.py [--d 1024 --ff 8192 --layers 4 --batches 1,4]
        [--share 0.15] [--block 32] [--rounds 5] [--workdir workdirs/decode_relu2]
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

from sparsity_jax.infer import Decoder, place  # noqa: E402
from sparsity_jax.infer.budget import calibrate, measured_candidates  # noqa: E402
from sparsity_jax.infer.gathered import CHUNK, Act, layer_ffn  # noqa: E402
from sparsity_jax.infer.neuron_order import coactivation_order, permute_params, permute_sparsify  # noqa: E402
from sparsity_jax.nn.model import LM, ModelConfig  # noqa: E402
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify  # noqa: E402
from sparsity_jax.devices.sharding import make_mesh  # noqa: E402

RANK, PROMPT, NEW, HIDDEN = 64, 16, 32, 32
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99)  # budgets: finer buckets than the default, so K stays near the union
ORDERS: dict = {}  # (run, mode label, b) -> per-layer permutations, computed once for every batch size
HEAD = (f"{'chooser':9s} {'layout':>6s} {'b':>3s} {'neuron':>6s} {'union':>6s} {'block':>6s} {'comp.':>6s} "
        f"{'dense':>5s} {'FFN ms':>7s} {'dense':>7s} {'speedup':>7s} {'bound':>6s} {'meas/bnd':>8s} {'effic.':>6s} "
        f"{'step ms':>7s} {'dense':>7s} {'speedup':>7s}")


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


def ffn_timer(dec: Decoder, x_LxNxD, sparse: bool):
    """A zero-argument timer of all layers' FFNs for one decode step of `dec`."""
    model = nnx.merge(dec.graphdef, dec.params)
    acts = [Act.of(b.ffn) for b in model.blocks]
    budgets = dec.budgets if sparse else None

    @jax.jit
    def run(tables, sparsify, x_LxNxD):
        at = lambda tree, i: tree[i] if isinstance(tree, tuple) else jax.tree.map(lambda v: v[i], tree)  # noqa: E731
        return jnp.stack([layer_ffn(at(sparsify, i), at(tables, i), x_LxNxD[i], act, mesh=dec.mesh,
                                    axis=dec.axis, budgets=None if budgets is None else budgets[i], chunk=dec.chunk,
                                    block=dec.block, kernel=dec.kernel)[0] for i, act in enumerate(acts)])

    return functools.partial(timed, run, dec.tables, dec.sparsify, x_LxNxD)


def step_timer(dec: Decoder, prompts):
    def go():
        return dec.generate(prompts, NEW).decode_s / (NEW - 1)
    return go


def bound(name: str, gated: bool, d: int, f: int, read_share: float, rank: int) -> float:
    """Dense FFN bytes / the bytes the chosen path must read (all in units of one weight)."""
    per_neuron = (3 if gated else 2) * d
    if name == "threshold":  # the full W_in (non-gated) or W_gate (gated) decides; then the chosen rows of the rest
        need = f * d + read_share * f * (per_neuron - d)
    else:  # the predictor, then every kernel's chosen rows
        need = d * rank + rank * f + f + read_share * f * per_neuron
    return f * per_neuron / need


def row(label: str, layout: str, dec: Decoder, gen, med: dict, gated: bool, rank: int) -> str:
    cfg = dec.cfg
    active_L, computed_L = gen.shares(cfg.d_ff)
    union_L, read_L = gen.union_shares(cfg.d_ff)
    read = float(read_L.mean())
    bnd = bound(label, gated, cfg.d_model, cfg.d_ff, read, rank)
    speed = med["ffn_dense"] / med["ffn"]
    eff = med["ffn_dense"] * read / med["ffn"]
    return (f"{label:9s} {layout:>6s} {dec.block or 1:3d} {active_L.mean():6.3f} {union_L.mean():6.3f} {read:6.3f} "
            f"{computed_L.mean():6.3f} {int(gen.stats['dense'].sum()):5d} {med['ffn'] * 1e3:7.2f} "
            f"{med['ffn_dense'] * 1e3:7.2f} {speed:6.2f}x {bnd:5.2f}x {speed / bnd:8.2f} {eff:6.2f} "
            f"{med['step'] * 1e3:7.2f} {med['step_dense'] * 1e3:7.2f} {med['step_dense'] / med['step']:6.2f}x")


def compare(graphdef, params, mesh, modes, calib, x_LxNxD, prompts, rows: int, block: int, args, *,
            gated: bool, rank: int, layout_tokens: int = 512, run: str = "synthetic") -> None:
    """Rows for each (label, Sparsify) of `modes`: neuron gathers, then the co-activation
    layout with block gathers."""
    dense = Decoder(graphdef, params, mesh)
    dense.generate(prompts, NEW)
    print(HEAD)
    for label, sparsify in modes:
        plain = Decoder(graphdef, params, mesh, sparsify, chunk=args.chunk)
        t0 = time.perf_counter()
        if (run, label, block) not in ORDERS:
            ORDERS[run, label, block] = coactivation_order(measured_candidates(plain, calib, max_tokens=layout_tokens),
                                                             block)
        perms = ORDERS[run, label, block]
        t_layout = time.perf_counter() - t0
        blocked = Decoder(graphdef, permute_params(params, perms), mesh, permute_sparsify(plain.sparsify, perms),
                          chunk=args.chunk, block=block)
        for layout, dec in (("none", plain), ("coact", blocked)):
            dec.set_budgets(calibrate(dec, calib, rows=rows, quantiles=QUANTILES, margin=0.05))
            gen = dec.generate(prompts, NEW)  # compiles; its statistics are the ones reported
            med = rounds({"ffn": ffn_timer(dec, x_LxNxD, True), "ffn_dense": ffn_timer(dense, x_LxNxD, False),
                          "step": step_timer(dec, prompts), "step_dense": step_timer(dense, prompts)}, args.rounds)
            print(row(label, layout, dec, gen, med, gated, rank), flush=True)
        print(f"  ({label}: layout {t_layout:.1f} s (0: cached); budgets layer 0: neuron {plain.budgets[0]}, "
              f"block {blocked.budgets[0]})", flush=True)


def planted_model(args):
    """The LM with hidden blocks of HIDDEN equal W_in columns, scattered; thresholds and a
    synthetic predictor whose sets are unions of the same hidden blocks, at `share`."""
    cfg = ModelConfig(vocab_size=259, d_model=args.d, num_layers=args.layers, num_heads=args.d // 128,
                      d_ff=args.ff, activation="relu2")
    model = LM(cfg, rngs=nnx.Rngs(0))
    key = jax.random.key(7)
    x_NxD = jax.random.normal(key, (4096, cfg.d_model))
    g = cfg.d_ff // HIDDEN
    ts, w1s, w2s, bs = [], [], [], []
    for i, blk in enumerate(model.blocks):
        k = jax.random.split(jax.random.fold_in(key, i), 4)
        perm = jax.random.permutation(k[0], cfg.d_ff)
        w_in = jnp.repeat(jax.random.normal(k[1], (cfg.d_model, g)) / np.sqrt(cfg.d_model), HIDDEN, axis=1)[:, perm]
        blk.ffn.w_in[...] = w_in
        w_out = blk.ffn.w_out[...]
        blk.ffn.w_out[...] = w_out / jnp.linalg.norm(w_out, axis=1, keepdims=True) * 0.02 * np.sqrt(cfg.d_model)
        a = blk.ffn.activate(x_NxD @ w_in)
        ts.append(jnp.quantile(jnp.abs(a) * blk.ffn.out_norms(), 1 - args.share))
        w1 = jax.random.normal(k[2], (cfg.d_model, RANK)) / np.sqrt(cfg.d_model)
        w2 = jax.random.normal(k[3], (RANK, g)) / np.sqrt(RANK)
        b = -jnp.quantile((x_NxD @ w1) @ w2, 1 - args.share, axis=0)
        w1s.append(w1)
        w2s.append(jnp.repeat(w2, HIDDEN, axis=1)[:, perm])
        bs.append(jnp.repeat(b, HIDDEN)[perm])
    thr = Sparsify(mode="threshold", threshold=jnp.stack(ts))
    pred = Sparsify(mode="predicted", predictor=PredictorSpec(jnp.stack(w1s), jnp.stack(w2s), jnp.stack(bs)))
    return model, cfg, thr, pred


def synthetic(args) -> None:
    model, cfg, thr, pred = planted_model(args)
    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    graphdef, params = place(model, mesh)
    print(f"\n== synthetic: d={args.d} F={args.ff} L={args.layers} relu2, planted share {args.share} in hidden "
          f"blocks of {HIDDEN} (scattered), predictor rank {RANK}, layout b={args.block}, chunk {args.chunk}, "
          f"prompt {PROMPT} + {NEW} new tokens, {args.rounds} rounds")
    rng = np.random.default_rng(0)
    for b in args.batches:
        x_LxNxD = jax.random.normal(jax.random.key(b), (args.layers, b, args.d))
        prompts = [list(map(int, rng.integers(1, 259, PROMPT))) for _ in range(b)]
        toks = jnp.asarray(rng.integers(1, 259, (16, 64)), jnp.int32)
        calib = [{"inputs": toks, "segment_ids": jnp.ones_like(toks), "loss_weights": jnp.ones(toks.shape),
                  "positions": jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), toks.shape)}]
        print(f"\n-- batch {b}")
        compare(graphdef, params, mesh, (("threshold", thr), ("predicted", pred)),
                calib, x_LxNxD, prompts, b, args.block, args, gated=False, rank=RANK)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--ff", type=int, default=8192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--share", type=float, default=0.15)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--block", type=int, default=32, help="neurons per block of the layout and the gathers")
    p.add_argument("--chunk", type=int, default=CHUNK, help="rows gathered per scan step (0: one gather)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", default=None, help="a trained run (configs/relu2/decode.py) for the trained rows")
    p.add_argument("--cett", type=float, default=None, help="its PPL-1%% CETT (default: from --ppl-json)")
    p.add_argument("--ppl-json", default=None, help="default: WORKDIR/report/ppl.json")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--layout-table", default=None, help="comma-separated trained runs: the layout table only")
    p.add_argument("--layout-sizes", default="8,16,32,64,128", help="block sizes of the layout table")
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    print("jax", jax.__version__, "| backend", jax.default_backend(), "|", time.strftime("%Y-%m-%d %H:%M"),
          "| load average", " ".join(f"{v:.2f}" for v in os.getloadavg()), "| cores", os.cpu_count())
    if args.layout_table:
        from bench.sparse_decode_trained import layout_table

        return layout_table(args.layout_table.split(","), [int(b) for b in args.layout_sizes.split(",")])
    if not args.skip_synthetic:
        synthetic(args)
    if args.workdir:
        from bench.sparse_decode_trained import trained  # imports TensorFlow (the run's data)

        trained(args, compare)


if __name__ == "__main__":
    main()

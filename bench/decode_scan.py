"""Decoding under the layer scan (issue 26): a `scan_layers` model decodes through
`lax.scan` (the KV cache stacked (L, B, S, G, K) and scanned with the parameters), so its
decode step compiles one block instead of L.

(a) Greedy `Decoder.generate` of a 24-layer toy (d 128, F 512, 4 heads, vocab 259,
    ReLU) scanned vs the same draws unrolled: wall time from building the decoder to the
    last token, compilation included, and the tokens (must be equal). Target: scanned /
    unrolled ≤ 0.5.
(b) The decode step's compile time (lower + compile of the jitted one-token step, as
    `Decoder.generate` compiles it ahead) of a 30-layer SmolLM2-135M-shaped model (d 576,
    F 1536, 9 heads / 3 KV heads, vocab 49152, SwiGLU, tied embeddings), scanned vs
    unrolled.
(c) Sparse decoding of (a)'s toy: `Sparsify(mode="threshold")` at each layer's 0.7-quantile
    magnitude, budgets calibrated per layer (they differ between layers; under the scan
    the layers share their union, each allowed its own): wall time as in (a), the sparse
    step's compile time, tokens and per-layer statistics (must be equal).

One device (CPU unless JAX_PLATFORMS says otherwise); the load average is printed, since
compile times on a shared machine move with it.

    .venv/bin/python bench/decode_scan.py [--layers 24 --new 32] [--smol-layers 30] [--no-sparse]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.infer import Decoder, place  # noqa: E402
from sparsity_jax.infer.budget import calibrate  # noqa: E402
from sparsity_jax.infer.decode import STATS  # noqa: E402
from sparsity_jax.infer.cache import left_pad  # noqa: E402
from sparsity_jax.nn.model import LM, ModelConfig  # noqa: E402
from sparsity_jax.nn.sparsify import Sparsify  # noqa: E402
from sparsity_jax.devices.sharding import make_mesh  # noqa: E402

TOY = ModelConfig(vocab_size=259, d_model=128, num_layers=24, num_heads=4, d_ff=512, activation="relu")
SMOL = ModelConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3, d_ff=1536,
                   activation="swiglu", tie_embeddings=True)


def generate(cfg: ModelConfig, mesh, prompts, new: int) -> tuple[float, object]:
    """(wall seconds from the decoder's construction to the last token, the Generation)."""
    model = LM(cfg, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    t0 = time.perf_counter()
    gen = Decoder(*place(model, mesh), mesh).generate(prompts, new)
    return time.perf_counter() - t0, gen


def calibration_batch(vocab: int) -> dict:
    toks = jax.random.randint(jax.random.key(1), (8, 32), 1, vocab)
    return {"inputs": toks, "segment_ids": jnp.ones_like(toks), "loss_weights": jnp.ones(toks.shape),
            "positions": jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), toks.shape)}


def sparse_decoder(cfg: ModelConfig, mesh, rows: int) -> Decoder:
    """A threshold decoder at each layer's 0.7-quantile neuron magnitude of random tokens,
    with per-layer budgets calibrated for `rows` rows."""
    model = LM(cfg, rngs=nnx.Rngs(0))
    batch = calibration_batch(cfg.vocab_size)
    _, rec = model.apply(batch["inputs"], record="scores")
    mag_LxM = (jnp.abs(rec["scores"]) * model.ffns().out_norms()[:, None, None, :]).reshape(cfg.num_layers, -1)
    dec = Decoder(*place(model, mesh), mesh, Sparsify(mode="threshold", threshold=jnp.quantile(mag_LxM, 0.7, axis=1)))
    dec.set_budgets(calibrate(dec, [batch], rows=rows))
    return dec


def sparse_generate(cfg: ModelConfig, mesh, prompts, new: int) -> tuple[float, float, object, Decoder]:
    """(wall seconds from the decoder's construction to the last token, the sparse step's
    compile seconds, the Generation, the decoder)."""
    jax.block_until_ready(calibration_batch(cfg.vocab_size))
    t0 = time.perf_counter()
    dec = sparse_decoder(cfg, mesh, len(prompts))
    gen = dec.generate(prompts, new)
    wall = time.perf_counter() - t0
    compile_s = step_compile_s(dec, len(prompts), 64)
    return wall, compile_s, gen, dec


def step_compile_s(dec: Decoder, batch: int, length: int) -> float:
    """Seconds to lower and compile the decoder's one-token greedy step (cache of `length` slots)."""
    pad_B = jnp.zeros((batch,), jnp.int32)
    t0 = time.perf_counter()
    dec._step.lower(dec.params, dec.tables, dec.sparsify, dec._new_cache(pad_B, length), pad_B, jnp.int32(0),
                    jax.random.key(0), jnp.float32(0), jnp.float32(1), dec._zeros(), greedy=True).compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=TOY.num_layers)
    ap.add_argument("--new", type=int, default=32, help="tokens generated per prompt")
    ap.add_argument("--smol-layers", type=int, default=SMOL.num_layers, help="0 skips part (b)")
    ap.add_argument("--no-sparse", dest="sparse", action="store_false", help="skip part (c)")
    args = ap.parse_args()
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; load average {os.getloadavg()}")
    prompts = [[5, 17, 3, 99, 42, 7, 8, 1], [200, 11, 12]]
    generate(dataclasses.replace(TOY, num_layers=1), mesh, prompts, 2)  # JAX's own first-use costs, once
    toy = dataclasses.replace(TOY, num_layers=args.layers)
    print(f"(a) greedy generate, {args.layers} layers d {toy.d_model} F {toy.d_ff}, batch {len(prompts)}, "
          f"prompt {left_pad(prompts)[0].shape[1]}, {args.new} new tokens; wall s incl. compile")
    wall, gens = {}, {}
    for scan in (False, True):
        wall[scan], gens[scan] = generate(dataclasses.replace(toy, scan_layers=scan), mesh, prompts, args.new)
        g = gens[scan]
        print(f"  {'scanned' if scan else 'unrolled':9s} wall {wall[scan]:7.2f} s  "
              f"(prefill {g.prefill_s * 1e3:.1f} ms, decode {g.decode_s * 1e3:.1f} ms, the rest compilation and setup)")
    same = np.array_equal(gens[True].tokens, gens[False].tokens)
    print(f"  scanned / unrolled wall = {wall[True] / wall[False]:.3f} (target <= 0.5); tokens equal: {same}")
    if args.smol_layers:
        smol = dataclasses.replace(SMOL, num_layers=args.smol_layers)
        print(f"(b) decode-step compile (lower + compile), SmolLM2-135M shape, {args.smol_layers} layers, "
              f"batch 1, cache 64")
        models = {scan: LM(dataclasses.replace(smol, scan_layers=scan), rngs=nnx.Rngs(0)) for scan in (False, True)}
        secs = {scan: step_compile_s(Decoder(*place(m, mesh), mesh), 1, 64) for scan, m in models.items()}
        print(f"  unrolled {secs[False]:7.2f} s   scanned {secs[True]:7.2f} s   ratio {secs[True] / secs[False]:.3f}")
    if args.sparse:
        print("(c) greedy sparse generate (threshold mode, per-layer calibrated budgets), the model of (a); "
              "wall s incl. calibration and compile")
        out = {scan: sparse_generate(dataclasses.replace(toy, scan_layers=scan), mesh, prompts, args.new)
               for scan in (False, True)}
        for scan, (wall_s, compile_s, g, dec) in out.items():
            print(f"  {'scanned' if scan else 'unrolled':9s} wall {wall_s:7.2f} s  "
                  f"sparse step compile {compile_s:6.2f} s  (decode {g.decode_s * 1e3:.1f} ms; "
                  f"{len(set(dec.budgets))} distinct budget tuples over {len(dec.budgets)} layers, "
                  f"{len({k for b in dec.budgets for k in b})} distinct budgets)")
        (wu, cu, gu, _), (ws, cs, gs, _) = out[False], out[True]
        equal = np.array_equal(gu.tokens, gs.tokens) and all(np.array_equal(gu.stats[k], gs.stats[k]) for k in STATS)
        print(f"  scanned / unrolled wall = {ws / wu:.3f}, compile = {cs / cu:.3f}; "
              f"tokens and statistics equal: {equal}")
        same = same and equal
    print(f"load average at the end {os.getloadavg()}")
    if not same:
        raise SystemExit("scanned and unrolled decoding gave different tokens or statistics")


if __name__ == "__main__":
    main()

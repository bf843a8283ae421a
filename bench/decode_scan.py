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

One device (CPU unless JAX_PLATFORMS says otherwise); the load average is printed, since
compile times on a shared machine move with it.

    .venv/bin/python bench/decode_scan.py [--layers 24 --new 32] [--smol-layers 30]
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
from sparsity_jax.infer.cache import left_pad  # noqa: E402
from sparsity_jax.nn.model import LM, ModelConfig  # noqa: E402
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


def step_compile_s(cfg: ModelConfig, mesh, batch: int, length: int) -> float:
    """Seconds to lower and compile the decoder's one-token greedy step (cache of `length` slots)."""
    dec = Decoder(*place(LM(cfg, rngs=nnx.Rngs(0)), mesh), mesh)
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
        secs = {scan: step_compile_s(dataclasses.replace(smol, scan_layers=scan), mesh, 1, 64)
                for scan in (False, True)}
        print(f"  unrolled {secs[False]:7.2f} s   scanned {secs[True]:7.2f} s   ratio {secs[True] / secs[False]:.3f}")
    print(f"load average at the end {os.getloadavg()}")
    if not same:
        raise SystemExit("scanned and unrolled decoding gave different tokens")


if __name__ == "__main__":
    main()

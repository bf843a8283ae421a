"""Part (c) of bench/decode_scan.py with the old chooser API (50d4a07): scanned model, per-layer calibrated budgets."""
import dataclasses, time, sys, os
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from sparsity_jax.infer import Decoder, Threshold, place
from sparsity_jax.infer.budget import calibrate
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.devices.sharding import make_mesh
TOY = ModelConfig(vocab_size=259, d_model=128, num_layers=24, num_heads=4, d_ff=512, activation="relu")
mesh = make_mesh(data=1, devices=jax.devices()[:1])
prompts = [[5, 17, 3, 99, 42, 7, 8, 1], [200, 11, 12]]
def batch_of(vocab):
    toks = jax.random.randint(jax.random.key(1), (8, 32), 1, vocab)
    return {"inputs": toks, "segment_ids": jnp.ones_like(toks), "loss_weights": jnp.ones(toks.shape),
            "positions": jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), toks.shape)}
Decoder(*place(LM(dataclasses.replace(TOY, num_layers=1), rngs=nnx.Rngs(0)), mesh), mesh).generate(prompts, 2)
for scan in (False, True):
    cfg = dataclasses.replace(TOY, scan_layers=scan)
    jax.block_until_ready(batch_of(cfg.vocab_size))
    t0 = time.perf_counter()
    model = LM(cfg, rngs=nnx.Rngs(0))
    batch = batch_of(cfg.vocab_size)
    _, rec = model.apply(batch["inputs"], record="scores")
    mag = (jnp.abs(rec["scores"]) * model.ffns().out_norms()[:, None, None, :]).reshape(cfg.num_layers, -1)
    dec = Decoder(*place(model, mesh), mesh, Threshold(), {"threshold": jnp.quantile(mag, 0.7, axis=1)})
    dec.set_budgets(calibrate(dec, [batch], rows=2))
    g = dec.generate(prompts, 32)
    wall = time.perf_counter() - t0
    pad_B = jnp.zeros((2,), jnp.int32)
    t1 = time.perf_counter()
    dec._step.lower(dec.params, dec.tables, dec.arrays, dec._new_cache(pad_B, 64), pad_B, jnp.int32(0), jax.random.key(0),
                    jnp.float32(0), jnp.float32(1), dec._zeros(), greedy=True).compile()
    print(f"  {'scanned' if scan else 'unrolled':9s} wall {wall:7.2f} s  sparse step compile {time.perf_counter() - t1:6.2f} s  "
          f"(decode {g.decode_s * 1e3:.1f} ms; {len(set(dec.budgets))} distinct budget tuples)", flush=True)

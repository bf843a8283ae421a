"""The KV-cache decode step of a scanned model with the Pallas TPU block kernels, compiled
by the TPU compiler: threshold and predicted modes, bf16 and f32, blocks b = 8 … 128,
on v5e and v5p chips. The compiled step holds the kernels' Mosaic custom call (not an XLA
fallback) and decodes under one loop over the layers."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.infer import Decoder, place
from sparsity_jax.infer.decode import _step
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from sparsity_jax.devices.sharding import make_mesh
from tests.tpu.retarget import on_mesh

L, D, F, R = 2, 128, 512, 16


def decoder(mode: str, dtype: str, block: int) -> Decoder:
    cfg = ModelConfig(vocab_size=256, d_model=D, num_layers=L, num_heads=4, d_ff=F, activation="swiglu",
                      scan_layers=True, dtype=dtype, param_dtype=dtype)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    if mode == "threshold":
        sp = Sparsify(mode="threshold", threshold=np.full((L,), 0.05, np.float32))
    else:
        sp = Sparsify(mode="predicted", predictor=PredictorSpec(
            rng.normal(size=(L, D, R)).astype(np.float32) / D ** 0.5,
            rng.normal(size=(L, R, F)).astype(np.float32) / R ** 0.5, np.zeros((L, F), np.float32)))
    dec = Decoder(*place(LM(cfg, rngs=nnx.Rngs(0)), mesh), mesh, sp, block=block)
    dec.set_budgets(((F // 4, F // 2),) * L)  # a quarter or a half of the neurons, whole blocks
    return dec


@pytest.mark.parametrize("chip,mode,dtype,block", [
    ("v5litepod-1", "threshold", "bfloat16", 8), ("v5litepod-1", "threshold", "float32", 128),
    ("v5litepod-1", "predictor", "bfloat16", 128), ("v5litepod-1", "predictor", "float32", 8),
    ("v5p-8", "threshold", "bfloat16", 32), ("v5p-8", "predictor", "float32", 64)])
def test_the_sparse_decode_step_compiles_with_the_mosaic_kernels(chip, mode, dtype, block, tpu):
    dec = decoder(mode, dtype, block)
    mesh = make_mesh(1, 1, 1, devices=tpu(chip)[:1])
    static = dataclasses.replace(dec.static, mesh=mesh, kernel="tpu")
    cache = dec._new_cache(jnp.zeros((4,), jnp.int32), 64)  # 4 rows, 64 positions
    args = on_mesh((dec.params, dec.tables, dec.sparsify, cache, jnp.zeros((4,), jnp.int32), jnp.int32(8),
                    jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0), dec._zeros()), mesh)
    step = jax.jit(functools.partial(_step, static), static_argnames="greedy")
    text = step.lower(*args, greedy=True).compile().as_text()
    assert "tpu_custom_call" in text, "the block kernels fell back to XLA"
    assert text.count(" while(") + text.count("=while(") >= 1  # the layers decode under one loop

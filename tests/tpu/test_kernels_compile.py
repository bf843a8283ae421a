"""The Pallas TPU decode kernels (`infer.kernels.tpu`) compiled through Mosaic by the TPU
compiler for v5e and v5p chips, in bf16 and f32, at the shapes of real checkpoints
(SmolLM2-135M d 576 / F 1536, Llama-7B d 4096 / F 11008 with b = 16) and blocks b = 8 …
128: each compiled module holds the kernel's Mosaic custom call, not an XLA fallback."""
import jax
import jax.numpy as jnp
import pytest

from sparsity_jax.infer.kernels import tpu as kernels

# (d, F, block b, rows N): SmolLM2-135M, Llama-7B (b = 16, a batch of 4), a wide toy at b = 128
SHAPES = [(576, 1536, 8, 1), (576, 1536, 32, 1), (4096, 11008, 16, 4), (1024, 8192, 64, 1), (1024, 8192, 128, 8)]


def swiglu(h, g):
    return jax.nn.silu(g) * h


@pytest.mark.parametrize("chip", ["v5litepod-1", "v5p-8"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_decode_kernels_compile_through_mosaic(chip, dtype, tpu):
    one = jax.sharding.SingleDeviceSharding(tpu(chip)[0])
    sds = lambda shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt, sharding=one)  # noqa: E731
    up = jax.jit(lambda x, w, u, i: kernels.block_up(x, w, i, gate_GxBxD=u, act=swiglu))
    relu2_up = jax.jit(lambda x, w, i: kernels.block_up(x, w, i, act=lambda h: jnp.square(jax.nn.relu(h))))
    down = jax.jit(lambda a, w, i: kernels.block_down(a, w, i))
    for d, F, b, n in SHAPES:
        G, K = F // b, max(1, F // b // 4)  # a quarter of the blocks
        w, idx = sds((G, b, d)), sds((K,), jnp.int32)
        for f, args in ((up, (sds((n, d)), w, w, idx)), (relu2_up, (sds((n, d)), w, idx)),
                        (down, (sds((n, K * b)), w, idx))):
            text = f.lower(*args).compile().as_text()
            assert "tpu_custom_call" in text, (chip, dtype, d, F, b)

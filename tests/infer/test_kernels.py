"""The block-gather projections: XLA path against numpy, the Pallas TPU and GPU kernels
against the XLA path in interpret mode, and both kernels lower for their backends
(cross-platform export from this CPU: Mosaic for TPU, Triton for CUDA)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from sparsity_jax.infer.kernels import block_down, block_up, resolve, tpu, gpu

G, B, D, N = 16, 8, 32, 3
BIDX = jnp.array([3, 0, 7, 15, 9], jnp.int32)


def swiglu(h, g):
    return jax.nn.silu(g) * h


@pytest.fixture(scope="module")
def data():
    k = jax.random.split(jax.random.key(0), 5)
    w, u, o = (jax.random.normal(k[i], (G, B, D)) for i in range(3))
    return w, u, o, jax.random.normal(k[3], (N, D)), jax.random.normal(k[4], (N, BIDX.shape[0] * B))


@pytest.mark.parametrize("chunk", [0, 16])
def test_xla_block_gathers_equal_numpy(data, chunk):
    w, u, o, x, a = (np.asarray(v, np.float64) for v in data)
    rows = (np.asarray(BIDX)[:, None] * B + np.arange(B)).reshape(-1)
    wf, uf, of = (v.reshape(-1, D)[rows] for v in (w, u, o))
    g = x @ uf.T
    np.testing.assert_allclose(block_up(*data[3:4], data[0], BIDX, kernel="xla", chunk=chunk), x @ wf.T, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(block_up(data[3], data[0], BIDX, gate_GxBxD=data[1], act=swiglu, kernel="xla",
                                        chunk=chunk), g / (1 + np.exp(-g)) * (x @ wf.T), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(block_down(data[4], data[2], BIDX, kernel="xla", chunk=chunk), a @ of, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["tpu", "gpu"])
def test_pallas_kernels_equal_the_xla_path_in_interpret_mode(data, kernel):
    w, u, o, x, a = data
    relu2 = lambda h: jnp.square(jax.nn.relu(h))  # noqa: E731
    for kw in ({"act": relu2}, {"gate_GxBxD": u, "act": swiglu}):
        np.testing.assert_allclose(block_up(x, w, BIDX, kernel=kernel, interpret=True, **kw),
                                   block_up(x, w, BIDX, kernel="xla", **kw), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(block_down(a, o, BIDX, kernel=kernel, interpret=True),
                               block_down(a, o, BIDX, kernel="xla"), atol=1e-5, rtol=1e-5)
    assert resolve("auto") == "xla"  # this CPU: the XLA path is the automatic choice


@pytest.mark.parametrize("mod,platform", [(tpu, "tpu"), (gpu, "cuda")])
def test_pallas_kernels_lower_for_their_backend(mod, platform):
    sds = jax.ShapeDtypeStruct
    w, x, i, a = sds((64, 32, 128), jnp.float32), sds((4, 128), jnp.float32), sds((8,), jnp.int32), \
        sds((4, 256), jnp.float32)
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    up = jax.jit(lambda x, w, u, i: mod.block_up(x, w, i, gate_GxBxD=u, act=swiglu))
    down = jax.jit(lambda a, w, i: mod.block_down(a, w, i))
    for f, args in ((up, (x, w, w, i)), (down, (a, w, i))):
        text = export.export(f, platforms=[platform], disabled_checks=checks)(*args).mlir_module()
        assert ("tpu_custom_call" if platform == "tpu" else "triton") in text

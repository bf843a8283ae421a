"""Evaluation's hot paths compiled by the TPU compiler on a v5e-8 slice meshed data=2,
fsdp=2, tensor=2: the sharded dense evaluation pass, the CETT search's dense step and its
threshold search loop, the PPL-p% search's sparse evaluation (thresholds as array inputs:
one compile for every threshold), and an imported Hugging Face model's forward. Each is
first run on 8 CPU devices meshed alike; its arguments, re-placed on the TPU mesh with the
same partition specs, are then lowered and compiled for TPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax import settings
from sparsity_jax.hf.load import inspect
from sparsity_jax.metrics.threshold_search import _default_window, _search
from sparsity_jax.metrics.threshold_setup import search_proxies
from sparsity_jax.nn.model import LM
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.devices import sharding as shd
from sparsity_jax.runtime.forward import make_eval_step
from sparsity_jax.runtime.model_run import build_model
from sparsity_jax.search import thresholds as th
from tests.tpu.retarget import on_mesh

MESH = {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2", "train.global_batch_size": "8", "model.num_layers": "2",
        "train.seq_len": "64", "model.d_ff": "512", "model.dtype": "bfloat16"}


def compiled_text(fn, *args, **static) -> str:
    return fn.lower(*args, **static).compile().as_text()


@pytest.fixture(scope="module")
def cpu_run():
    """(run on 8 CPU devices, its params, two validation batches) of a random bf16 model."""
    run = build_model(settings.load("configs/default.py", MESH), 259)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(LM(run.model_cfg, rngs=nnx.Rngs(0)), nnx.Param)),
                     out_shardings=run.param_shardings)()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        tokens = rng.integers(0, 259, (8, 64), dtype=np.int32)
        local = {"inputs": tokens, "targets": tokens, "segment_ids": np.ones_like(tokens),
                 "positions": np.tile(np.arange(64, dtype=np.int32), (8, 1)),
                 "loss_weights": np.ones((8, 64), np.float32)}
        batches.append(run.device_batch(local))
    return run, params, batches


@pytest.fixture(scope="module")
def tpu_mesh(tpu):
    return shd.make_mesh(2, 2, 2, devices=tpu("v5litepod-8"))


def test_dense_evaluation_and_the_ppl_sparse_step_compile_for_tpu(cpu_run, tpu_mesh):
    run, params, batches = cpu_run
    step = jax.jit(shd.with_activation_sharding(make_eval_step(run.graphdef, record="mask"), tpu_mesh))
    text = compiled_text(step, on_mesh(params, tpu_mesh), on_mesh(batches[0], tpu_mesh), Sparsify())
    assert "all-reduce" in text or "reduce-scatter" in text  # sharded: collectives over the mesh
    # the PPL-p% search's sparse evaluation: per-layer thresholds are an array input, so one compile serves all
    sparsify = Sparsify(mode="threshold", threshold=jnp.zeros((run.model_cfg.num_layers,), jnp.float32))
    th._sparse_step.lower(run.graphdef, on_mesh(params, tpu_mesh), on_mesh(batches[0], tpu_mesh),
                          on_mesh(sparsify, tpu_mesh)).compile()


def test_the_cett_search_compiles_for_tpu(cpu_run, tpu_mesh):
    run, params, batches = cpu_run
    cache = th.dense_pass(run.graphdef, params, batches, mesh=run.mesh, mode="cache")
    placement = th.search_placement(batches, run.model_cfg.d_ff, run.mesh)
    assert placement.tokens and placement.neurons  # tokens and neurons both split: the sharded search
    stacked = th._stack(batches, placement)
    proxies = search_proxies(stacked["loss_weights"] > 0, run.model_cfg.d_ff)
    L, F = run.model_cfg.num_layers, run.model_cfg.d_ff
    shape = (len(batches), L, 8, 64)
    scores = th._zeros(shape + (F,), jnp.float32, placement, "scores")
    inv_norm = th._zeros(shape, jnp.float32, placement, "layer_tokens")
    args = on_mesh((params, batches[0], jnp.int32(0), scores, inv_norm, proxies), tpu_mesh)
    th._dense_step.lower(run.graphdef, *args, placement=on_mesh(placement, tpu_mesh),
                         dtype=np.dtype(np.float32)).compile()
    target_LxK = jnp.full((L, 1), 0.2, jnp.float32)
    window = _default_window(int(np.prod(cache.prepared.real.shape)), F)
    text = compiled_text(_search, on_mesh(cache.prepared, tpu_mesh), on_mesh(target_LxK, tpu_mesh), window=window,
                         max_evaluations=8)
    assert "while" in text  # the search loop runs on the device (lax.while_loop), not on the host


def test_an_imported_hf_model_forward_compiles_on_a_v5e_mesh(tpu_mesh):
    cfg, _ = inspect("tests/fixtures/hf/llama_gqa_llama3", "bfloat16")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    param_sh = shd.param_shardings(abstract, tpu_mesh)
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                          nnx.to_pure_dict(abstract), param_sh)
    tokens = jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=shd.batch_sharding(tpu_mesh))
    batch = {"inputs": tokens, "targets": tokens, "segment_ids": tokens, "positions": tokens,
             "loss_weights": jax.ShapeDtypeStruct((8, 32), jnp.float32, sharding=shd.batch_sharding(tpu_mesh))}
    step = jax.jit(shd.with_activation_sharding(make_eval_step(graphdef, record="scores"), tpu_mesh))
    assert "TPU v5 lite" in tpu_mesh.devices.flat[0].device_kind
    step.lower(params, batch, Sparsify()).compile()

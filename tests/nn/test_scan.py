"""Scanned == unrolled blocks, and every remat policy == no remat, trained for 5 steps on a
data=2, fsdp=2, tensor=2 mesh (issue 21, acceptance 1).

The reference is the unrolled, non-rematerialised model (the library's forward before
scanning existed): both layouts start from the same draws (the stacked parameters are
the per-layer ones stacked, checked here), take 5 SGD steps on the same batches, and
must give the same losses (1e-5) and per-layer activation ratios / MoE drop counts;
remat must give the no-remat losses (1e-6) and gradients.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.infer.cache import init_cache
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.devices import sharding as shd
import optax

from sparsity_jax.runtime.block_stacking import convert_blocks
from sparsity_jax.ssd.convert import centres_from_params, permute_state
from tests.train.helpers import synthetic_batch

STEPS, LR = 5, 0.5
BASE = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=2, d_ff=64)
KEEP = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], bool)  # PLD's draws: every pattern once
SCALE = np.array([1.25, 2.0], np.float32)
# both sides of every comparison compile with these options: LLVM at -O0 halves XLA:CPU's compile time
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CASES = {  # name: (model fields, how the FFNs run, record)
    "relu": (dict(activation="relu"), "dense", "mask"),
    "relu2": (dict(activation="relu2"), "dense", "both"),
    "swiglu": (dict(activation="swiglu"), "dense", "mask"),
    "ssd_sparse": (dict(activation="relu"), "moe", "mask"),
    "pld": (dict(activation="relu"), "pld", None),
}


@pytest.fixture(scope="module")
def mesh():
    return shd.make_mesh(2, 2, 2)


@pytest.fixture(scope="module")
def batches(mesh):
    rng = np.random.default_rng(0)
    return [jax.device_put(synthetic_batch(rng, 8, 16, BASE.vocab_size), shd.batch_sharding(mesh))
            for _ in range(STEPS)]


def train(cfg: ModelConfig, mode: str, record, mesh, batches):
    """5 SGD steps: (losses (5,), per-layer records per step, first gradients, params)."""
    model = LM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    param_sh = shd.param_shardings(state, mesh)
    params = jax.device_put(params, param_sh)

    def step(params, batch, keep_L, scale_L):
        sp = Sparsify()
        if mode == "moe":
            sp = Sparsify(mode="moe", moe=MoESpec(centres_from_params(params, 4), num_experts=4, top_k=2))
        keep, scale = (keep_L, scale_L) if mode == "pld" else (None, None)

        def loss_fn(p):
            logits, rec = nnx.merge(graphdef, p).apply(batch["inputs"], batch["segment_ids"], batch["positions"],
                                                       sparsify=sp, record=record, layer_keep=keep, layer_scale=scale)
            w_BxT = batch["loss_weights"]
            loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * w_BxT)
            out = {k: v for k, v in rec.items() if k == "moe_dropped"}
            if "mask" in rec:  # per-layer activation ratio over real tokens, and the scores' mean magnitude
                out["ratio"] = jnp.einsum("lbtf,bt->l", rec["mask"].astype(jnp.float32), w_BxT) / (
                    jnp.sum(w_BxT) * rec["mask"].shape[-1])
            if "scores" in rec:
                out["scores"] = jnp.mean(jnp.abs(rec["scores"]), axis=(1, 2, 3))
            return loss / jnp.sum(w_BxT), out

        (loss, rec), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - LR * g, params, g), loss, rec, g

    jstep = jax.jit(shd.with_activation_sharding(step, mesh), in_shardings=(param_sh, shd.batch_sharding(mesh), None,
                                                                            None), out_shardings=(param_sh, None, None, param_sh))
    jstep = jstep.lower(params, batches[0], KEEP[0], SCALE).compile(compiler_options=FAST_COMPILE)
    losses, recs, first = [], [], None
    start = params
    for i, batch in enumerate(batches):
        params, loss, rec, g = jstep(params, batch, KEEP[i], SCALE)
        losses.append(float(loss))
        recs.append(jax.device_get(rec))
        first = g if first is None else first
    return np.array(losses), recs, first, start


@pytest.fixture(scope="module")
def runs(mesh, batches):
    """Training runs by (case, scanned, remat), each compiled once."""
    cache = {}

    def get(case: str, scan: bool, remat: str = "none"):
        key = (case, scan, remat)
        if key not in cache:
            fields, mode, record = CASES[case]
            cfg = dataclasses.replace(BASE, scan_layers=scan, remat=remat, **fields)
            cache[key] = train(cfg, mode, record, mesh, batches)
        return cache[key]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_scanned_equals_unrolled(case, runs):
    loss_u, rec_u, _, params_u = runs(case, False)
    loss_s, rec_s, _, params_s = runs(case, True)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), convert_blocks(params_u, True), params_s)
    assert np.all(np.isfinite(loss_u)) and loss_u[-1] < loss_u[0] - 0.05, loss_u  # it trains
    np.testing.assert_allclose(loss_s, loss_u, atol=1e-5, rtol=0)
    for ru, rs in zip(rec_u, rec_s):
        assert ru.keys() == rs.keys()
        for k in ru:
            np.testing.assert_allclose(rs[k], ru[k], atol=1e-5, rtol=0, err_msg=k)
    if case in ("relu", "relu2", "swiglu"):  # per-layer activation ratios recorded: (L,), in (0, 1]
        assert rec_u[0]["ratio"].shape == (BASE.num_layers,) and 0 < rec_u[0]["ratio"].min() <= 1
    if case == "ssd_sparse":
        assert rec_u[0]["moe_dropped"].shape == (BASE.num_layers,)


@pytest.mark.parametrize("case,scan,remat", [("relu2", True, "dots"), ("relu2", True, "full"), ("swiglu", False, "ffn"),
                                             ("pld", True, "full")])
def test_remat_policies_give_the_no_remat_losses_and_gradients(case, scan, remat, runs):
    """Every policy, scanned and unrolled (the gated FFN's two named pre-activations kept by
    `ffn`), and under PLD's lax.cond."""
    loss_0, rec_0, grads_0, _ = runs(case, scan)
    loss_r, rec_r, grads_r, _ = runs(case, scan, remat)
    np.testing.assert_allclose(loss_r, loss_0, atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), grads_r, grads_0)
    for k in rec_0[-1]:
        np.testing.assert_allclose(rec_r[-1][k], rec_0[-1][k], atol=1e-6, err_msg=k)


def test_ssd_permutation_of_stacked_state_equals_per_layer(runs):
    """SSD's dense → sparse switch permutes stacked blocks as it permutes per-layer ones."""
    params = runs("relu", False)[3]
    perms = jnp.stack([jax.random.permutation(jax.random.key(i), BASE.d_ff) for i in range(BASE.num_layers)])
    state = {"params": params, "opt_state": ({"mu": params},)}
    per_layer = permute_state(state, perms)
    stacked = permute_state(convert_blocks(state, True), perms)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), convert_blocks(per_layer, True), stacked)


def test_kv_cache_forward_of_a_scanned_model_equals_the_unrolled_one():
    """The stacked (L, B, S, G, K) cache rides through the scan: logits and every layer's cache agree."""
    m_u = LM(BASE, rngs=nnx.Rngs(0))
    m_s = LM(dataclasses.replace(BASE, scan_layers=True), rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(1), (2, 6), 0, BASE.vocab_size)
    cache = init_cache(BASE, jnp.zeros((2,), jnp.int32), 8)
    out_u = m_u.forward(tok, cache=cache, start=jnp.int32(0))
    out_s = m_s.forward(tok, cache=cache, start=jnp.int32(0))
    np.testing.assert_allclose(out_s.logits, out_u.logits, atol=1e-5)
    assert out_s.cache.k.shape == (BASE.num_layers, 2, 8, BASE.kv_heads, BASE.d_model // BASE.num_heads)
    np.testing.assert_allclose(out_s.cache.k, out_u.cache.k, atol=1e-5)
    np.testing.assert_allclose(out_s.cache.v, out_u.cache.v, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_per_layer_inputs_equal_stacked_ones(scan):
    """`stack.run` gives layer i item i of a `PerLayer` input, as it gives slice i of a stacked
    one (a scan stacks them): y = x + w_i · x per layer, checked against a numpy loop."""
    from sparsity_jax.nn import stack

    cfg = ModelConfig(vocab_size=61, d_model=8, num_layers=3, num_heads=2, d_ff=16, scan_layers=scan)
    blocks = LM(cfg, rngs=nnx.Rngs(0)).blocks
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 8, 8)).astype(np.float32)
    x = rng.normal(size=(2, 8)).astype(np.float32)

    def fn(_, x, xs_i, set_i):
        return x + x @ xs_i["w"], xs_i["w"].sum()

    settings = [None] * 3
    want, sums = x.copy(), []
    for i in range(3):
        want = want + want @ w[i]
        sums.append(w[i].sum())
    for xs in ({"w": jnp.asarray(w)}, {"w": stack.PerLayer([jnp.asarray(wi) for wi in w])}):
        y, outs = stack.run(blocks, jnp.asarray(x), fn, settings, xs)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(outs), sums, rtol=1e-5)

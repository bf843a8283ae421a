"""SSD MoE mode (nn/moe.py) and dense↔MoE conversion of a train state (ssd/convert.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.methods import DenseStep, make_method
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.moe import moe_ffn, route
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.ssd.convert import block_labels, centres_from_params, dense_to_moe, permute_state
from sparsity_jax.ssd.kmeans import inverse_permutation
from sparsity_jax.train.setup import build
from sparsity_jax.train.step import make_train_step
from tests.train.helpers import synthetic_batch, tiny_config


def ffn_moe(ffn, *args, **kwargs):
    """`moe_ffn` over the kernels and activation of an FFN module."""
    return moe_ffn(ffn.kernels(), ffn.activate, *args, **kwargs)

D, F, N = 16, 64, 8
TOL = dict(rtol=1e-5, atol=1e-5)
moe = nnx.jit(ffn_moe, static_argnames=("num_experts", "top_k", "dispatch", "capacity_factor", "drop_share"))


def make_ffn(act="relu", d=D, f=F, seed=0):
    return FFN(d, f, act, rngs=nnx.Rngs(seed))


def rand(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("act", ["relu", "swiglu"])
@pytest.mark.parametrize("dispatch", ["capacity", "ragged", "masked"])
def test_all_experts_equal_dense(act, dispatch):
    ffn, x = make_ffn(act), rand(1, (2, 7, D))
    y, aux = moe(ffn, x, rand(2, (N, D)), num_experts=N, top_k=N, dispatch=dispatch, capacity_factor=1.0)
    np.testing.assert_allclose(y, ffn(x), **TOL)
    assert int(aux["dropped"]) == 0 and aux["load_N"].tolist() == [14] * N


@pytest.mark.parametrize("act,drop_share", [("relu", 0.0), ("swiglu", 0.0), ("relu", 0.4)])
def test_dispatch_paths_equal_masked_reference_with_grads(act, drop_share):
    """Values and gradients (kernels, x, centres) of both sparse paths, also with
    dynamic top-k (the capacity path's slot gates vs the reference's per-pair gates)."""
    ffn, x, c = make_ffn(act), rand(3, (2, 12, D)), rand(4, (N, D))
    graphdef, params = nnx.split(ffn)

    def loss(p, x, c, dispatch):
        y, aux = ffn_moe(nnx.merge(graphdef, p), x, c, num_experts=N, top_k=3, dispatch=dispatch,
                         capacity_factor=N / 3, drop_share=drop_share)
        return jnp.sum(y * jnp.cos(y)), (y, aux["dropped"])

    val_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    outs = {d: val_grad(params, x, c, d)
            for d in ("capacity", "ragged", "masked")}
    ref = outs.pop("masked")
    assert float(jnp.abs(ref[1][2]).sum()) > 0  # the router gradient is there to compare
    for (val, (y, dropped)), grads in outs.values():
        assert int(dropped) == 0
        np.testing.assert_allclose(y, ref[0][1][0], **TOL)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grads, ref[1])


def test_capacity_drops_keep_gradients_of_the_kept_pairs_only():
    """With pairs dropped at capacity, values and gradients (kernels, x, centres) of the
    capacity path equal the masked reference whose per-pair gates are zeroed for exactly
    the dropped pairs (priority: choice rank, then token), with the router gradient on."""
    from sparsity_jax.nn.moe import _masked, expert_kernels

    ffn, x, c, k, cf = make_ffn("relu"), rand(5, (24, D)), rand(6, (N, D)), 3, 0.5
    cap = math.ceil(cf * 24 * k / N)
    experts = np.asarray(route(x, c, k)[0])
    keep, load = np.zeros(experts.shape, bool), np.zeros(N, int)
    for r in range(k):
        for t in range(24):
            keep[t, r], load[experts[t, r]] = load[experts[t, r]] < cap, load[experts[t, r]] + 1
    graphdef, params = nnx.split(ffn)

    def capacity(p, x, c):
        y, aux = ffn_moe(nnx.merge(graphdef, p), x, c, num_experts=N, top_k=k, capacity_factor=cf)
        return jnp.sum(y * jnp.cos(y)), aux["dropped"]

    def reference(p, x, c):
        f = nnx.merge(graphdef, p)
        e, gates, ones = route(x, c, k)
        y = _masked(f.activate, x, e, jnp.where(keep, gates, 0.0), ones, expert_kernels(f.kernels(), N))[0]
        return jnp.sum(y * jnp.cos(y)), jnp.sum(~keep)

    (val, dropped), got = jax.value_and_grad(capacity, argnums=(0, 1, 2), has_aux=True)(params, x, c)
    (want_val, want_dropped), want = jax.value_and_grad(reference, argnums=(0, 1, 2), has_aux=True)(params, x, c)
    assert int(dropped) == int(want_dropped) > 5
    np.testing.assert_allclose(val, want_val, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)


def test_capacity_drops_match_hand_count():
    """4 tokens, 4 experts (identity centres), K = 2, C = ceil(0.5·4·2/4) = 1.

    Choices (first, second): t0 (0,1), t1 (1,0), t2 (0,2), t3 (0,3). Loads 4,2,1,1 →
    dropped (4−1)+(2−1) = 4. First choices go first in token order, so expert 0 keeps
    t0, expert 1 keeps t1, experts 2 and 3 keep the second choices of t2 and t3.
    """
    ffn = make_ffn("relu", d=4, f=8)
    x = jnp.array([[4.0, 3, 0, 0], [3, 4, 0, 0], [4, 0, 3, 0], [4, 0, 0, 3]])
    y, aux = moe(ffn, x, jnp.eye(4), num_experts=4, top_k=2, capacity_factor=0.5)
    assert aux["capacity"] == 1 and int(aux["dropped"]) == 4 and aux["load_N"].tolist() == [4, 2, 1, 1]
    w_in, w_out = np.asarray(ffn.w_in[...]), np.asarray(ffn.w_out[...])
    expert = lambda t, n: np.maximum(np.asarray(x[t]) @ w_in[:, 2 * n:2 * n + 2], 0) @ w_out[2 * n:2 * n + 2]  # noqa: E731
    np.testing.assert_allclose(y, np.stack([expert(t, t) for t in range(4)]), **TOL)


def test_router_gradient_flows_while_forward_uses_alpha_one():
    ffn, x, c = make_ffn("relu"), rand(5, (10, D)), rand(6, (N, D))
    r = rand(7, (10, D))

    opts = dict(num_experts=N, top_k=2, capacity_factor=N / 2)  # nothing dropped

    def loss(c):
        return jnp.sum(ffn_moe(ffn, x, c, **opts)[0] * r)

    experts, gates, _ = jax.jit(route, static_argnums=2)(x, c, 2)
    np.testing.assert_array_equal(gates, 1.0)  # exactly 1, not 1 ± ulp
    # forward = Σ_selected W_out,n σ(W_in,n x) with α = 1
    w_in, w_out, e = np.asarray(ffn.w_in[...]), np.asarray(ffn.w_out[...]), F // N
    y_n = lambda t, n: np.maximum(np.asarray(x[t]) @ w_in[:, n * e:(n + 1) * e], 0) @ w_out[n * e:(n + 1) * e]  # noqa: E731
    want = np.stack([sum(y_n(t, int(n)) for n in experts[t]) for t in range(10)])
    np.testing.assert_allclose(moe(ffn, x, c, **opts)[0], want, **TOL)
    # d loss / d c_n = Σ_t [n selected for t] (r_t · y_t,n) x_t   (straight-through α)
    grad = jax.jit(jax.grad(loss))(c)
    hand = np.zeros((N, D))
    for t in range(10):
        for n in np.asarray(experts[t]):
            hand[n] += float(np.asarray(r[t]) @ y_n(t, int(n))) * np.asarray(x[t])
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, hand, rtol=1e-4, atol=1e-5)


def test_all_experts_without_router_grad_train_like_dense():
    """K = N: the forward is the dense FFN either way, but only router_grad=False gives the
    dense gradient; the straight-through router adds Σ_n ⟨dL/dy, y_n⟩ c_n to dx."""
    ffn, x, c = make_ffn("relu"), rand(13, (2, 12, D)), rand(14, (N, D))
    graphdef, params = nnx.split(ffn)

    def loss(p, x, router_grad=None):
        f = nnx.merge(graphdef, p)
        y = f(x) if router_grad is None else ffn_moe(f, x, c, num_experts=N, top_k=N, router_grad=router_grad)[0]
        return jnp.sum(y * jnp.cos(y))

    grad = lambda rg: jax.grad(loss, argnums=(0, 1))(params, x, rg)  # noqa: E731
    dense = grad(None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grad(False), dense)
    assert np.abs(np.asarray(grad(True)[1] - dense[1])).max() > 1e-3


def test_dynamic_top_k_drops_lowest_share():
    ffn, x, c = make_ffn("relu"), rand(8, (3, 8, D)), rand(9, (N, D))
    s, k, share = 24, 4, 0.75
    experts, gates, keep = jax.jit(route, static_argnums=(2, 3))(x.reshape(s, D), c, k, share)
    assert int(keep.sum()) == s * k - math.floor(share * s * k) == 24
    alpha = np.asarray(x.reshape(s, D) @ c.T)[np.arange(s)[:, None], np.asarray(experts)]
    assert alpha[np.asarray(keep)].min() >= alpha[~np.asarray(keep)].max()
    np.testing.assert_array_equal(gates, np.asarray(keep, np.float32))
    opts = dict(num_experts=N, top_k=k, drop_share=share, capacity_factor=N / k)
    ref, aux = moe(ffn, x, c, dispatch="masked", **opts)
    assert int(aux["load_N"].sum()) == 24
    for dispatch in ("capacity", "ragged"):
        np.testing.assert_allclose(moe(ffn, x, c, dispatch=dispatch, **opts)[0], ref, **TOL)


def test_moe_spec_slices_layers():
    spec = MoESpec(centres=jnp.zeros((3, N, D)), num_experts=N, top_k=2)
    assert spec.for_layer(1).centres.shape == (N, D) and spec.for_layer(1).options()["top_k"] == 2
    assert jax.tree.leaves(spec)[0].shape == (3, N, D)  # centres are a pytree leaf, options static


# ---------- whole-LM conversion ---------------------------------------------------------

NL = 4  # experts in the tiny LM (d_ff = 64)


@pytest.fixture(scope="module")
def run_and_states():
    run = build(tiny_config(), 259, make_method, devices=jax.devices()[:1])  # one device: faster compiles
    batch = synthetic_batch(np.random.default_rng(0), 16, 32, 259)
    step = jax.jit(make_train_step(run.graphdef, run.tx, DenseStep(record=None)))
    state, _ = step(run.init_state(jax.random.key(0)), batch)  # non-zero Adam moments
    state = dict(state, units=run.init_state(jax.random.key(0))["units"])
    state["units"]["ever"] = jax.random.bernoulli(jax.random.key(3), 0.5, state["units"]["ever"].shape)
    conv_state, conv = dense_to_moe(state, NL, key=jax.random.key(1))
    return run, batch, state, conv_state, conv, step


def unpermute(tree, perms):
    return permute_state(tree, jnp.stack([inverse_permutation(p) for p in perms]))


def moe_mode(centres_LxNxD) -> Sparsify:
    """Every FFN in MoE mode with K = N."""
    return Sparsify(mode="moe", moe=MoESpec(centres=centres_LxNxD, num_experts=NL, top_k=NL))


def test_conversion_is_a_permutation_into_contiguous_experts(run_and_states):
    _, _, state, conv_state, conv, _ = run_and_states
    for l in range(2):
        np.testing.assert_array_equal(jnp.take(conv.labels[l], conv.perms[l]), block_labels(64, NL))
        w_in = state["params"]["blocks"][l]["ffn"]["w_in"]
        np.testing.assert_array_equal(conv_state["params"]["blocks"][l]["ffn"]["w_in"], w_in[:, conv.perms[l]])
        np.testing.assert_array_equal(conv_state["units"]["ever"][l], state["units"]["ever"][l][conv.perms[l]])
    np.testing.assert_allclose(conv.centres, centres_from_params(conv_state["params"], NL))
    assert conv.centres.shape == (2, NL, 32)
    back = unpermute(conv_state, conv.perms)
    jax.tree.map(np.testing.assert_array_equal, back["opt_state"], state["opt_state"])


def test_dense_moe_dense_is_identity_of_lm_output(run_and_states):
    run, batch, state, conv_state, conv, _ = run_and_states

    @jax.jit
    def logits(params, sparsify=Sparsify()):
        model = nnx.merge(run.graphdef, params)
        return model(batch["inputs"], batch["segment_ids"], batch["positions"], sparsify=sparsify)

    original = logits(state["params"])
    np.testing.assert_allclose(logits(conv_state["params"]), original, **TOL)  # permuted dense
    np.testing.assert_allclose(logits(conv_state["params"], moe_mode(conv.centres)), original, **TOL)  # K = N MoE


def test_train_step_commutes_with_conversion(run_and_states):
    """Adam moments follow the permutation: step(convert(s)) = convert(step(s)).

    The MoE K = N step uses zero centres: then the straight-through router adds no
    gradient to x (it is x·0), so the step must equal the dense one exactly.
    """
    run, batch, state, conv_state, conv, dense_step = run_and_states
    want, _ = dense_step(state, batch)
    got_dense, _ = dense_step(conv_state, batch)
    zero_centres = jnp.zeros_like(conv.centres)
    moe_step = jax.jit(make_train_step(run.graphdef, run.tx, DenseStep(record=None)))
    got_moe, _ = moe_step(conv_state, batch, moe_mode(zero_centres))
    for got in (got_dense, got_moe):
        back = unpermute(got, conv.perms)
        for key in ("params", "opt_state"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), back[key], want[key])


def test_router_gradients_equal_full_product_reference():
    """The custom-VJP gate gradient equals differentiating 1 + (α − sg(α)) through x·cᵀ."""
    x, c, r = rand(10, (20, D)), rand(11, (N, D)), rand(12, (20, 3))

    def reference(x, c):
        alpha = x @ c.T
        val, _ = jax.lax.top_k(alpha, 3)
        return jnp.sum((1.0 + (val - jax.lax.stop_gradient(val))) * r)

    def ours(x, c):
        return jnp.sum(route(x, c, 3)[1] * r)

    assert float(ours(x, c)) == float(jnp.sum(r))
    got, want = jax.grad(ours, argnums=(0, 1))(x, c), jax.grad(reference, argnums=(0, 1))(x, c)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got, want)


def test_router_backward_holds_no_pair_by_feature_buffer():
    """The gates' backward is (S, N) matmuls: XLA's compiled temp memory stays far below
    one (S, K, d) buffer (the gathered-centres form needed two: 302 MB at S=8192, d=768)."""
    s, n, k, d = 4096, 32, 6, 256
    x, c = jnp.ones((s, d)), jnp.ones((n, d))
    grad = jax.jit(jax.grad(lambda x, c: jnp.sum(route(x, c, k)[1]), argnums=(0, 1)))
    temp = grad.lower(x, c).compile().memory_analysis().temp_size_in_bytes
    pair_buffer = s * k * d * 4  # 25.2 MB
    assert temp < pair_buffer / 4, (temp, pair_buffer)

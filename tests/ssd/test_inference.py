"""Sparse inference (ssd/inference.py): k = N is dense, dynamic top-k without drops is
plain top-k, MoEfication is deterministic, bad k is a UserError."""
import jax
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.methods import make_method, trained_sparse
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.moe import moe_ffn
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.ssd import inference as inf
from sparsity_jax.ssd.convert import centres_from_params
from sparsity_jax.train.setup import build
from tests.train.helpers import synthetic_batch, tiny_config

N = 8  # tiny d_ff = 64 → experts of 8 neurons


@pytest.fixture(scope="module")
def lm():
    run = build(tiny_config(), 259, make_method, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batches = [run.device_batch(synthetic_batch(rng, 16, 32, 259)) for _ in range(2)]
    params = run.init_state(jax.random.key(0))["params"]
    return run, params, (lambda p, sp: run.evaluate(p, batches, sp))


def test_all_experts_equal_dense_eval_loss(lm):
    run, params, evaluate = lm
    dense = float(evaluate(params, Sparsify())["loss"])
    moe_params, centres, used = inf.inference_experts(params, N, key=jax.random.key(1))
    assert used == "moefy"  # auto, never sparse-trained
    assert abs(float(evaluate(moe_params, Sparsify())["loss"]) - dense) <= 1e-5  # permutation: same function
    rows = inf.sweep(evaluate, moe_params, centres, N, [1, N], seq_len=32)
    assert [r["k"] for r in rows] == [1, N]
    assert abs(rows[-1]["loss"] - dense) <= 1e-5
    # k = 1 through another dispatch: gather / expert matmuls / scatter with room for every token
    capacity = Sparsify(mode="moe", moe=MoESpec(centres=centres, num_experts=N, top_k=1, dispatch="capacity",
                                                capacity_factor=N))
    assert rows[0]["loss"] == pytest.approx(float(evaluate(moe_params, capacity)["loss"]), abs=1e-5)
    assert abs(rows[0]["loss"] - dense) > 1e-3 and rows[0]["experts_per_token"] == 1.0  # k = 1 really drops


def test_dynamic_top_k_without_drops_is_plain_top_k(lm):
    run, params, evaluate = lm
    moe_params, centres, _ = inf.inference_experts(params, N, key=jax.random.key(1))
    # a share so small that ⌊share · T·k⌋ = 0 runs the ranking code but drops nothing
    rows = inf.sweep(evaluate, moe_params, centres, N, [2], [1e-6, 0.5], seq_len=32)
    plain, tiny, half = rows
    assert (plain["drop_share"], tiny["drop_share"], half["drop_share"]) == (0.0, 1e-6, 0.5)
    assert tiny["loss"] == plain["loss"] and tiny["experts_per_token"] == 2.0
    # dropping half of the 2·T candidates per sequence, through the capacity dispatch with room for all:
    # equal up to near-tied importances that float rounding of the other kernels ranks differently
    # (the two agree to 2e-7 on one FFN, tests/ssd/test_moe.py; through 2 layers 2e-3 of 6.05 here)
    dyn = MoESpec(centres=centres, num_experts=N, top_k=2, dispatch="capacity", capacity_factor=N / 2,
                  drop_share=0.5)
    assert half["experts_per_token"] == 1.0
    assert half["loss"] == pytest.approx(float(evaluate(moe_params, Sparsify(mode="moe", moe=dyn))["loss"]), abs=5e-3)
    assert half["loss"] > plain["loss"] + 1e-4


def test_dynamic_top_k_share_zero_equals_top_k_in_the_ffn():
    ffn = FFN(16, 64, "relu", rngs=nnx.Rngs(0))
    x, c = jax.random.normal(jax.random.key(1), (2, 12, 16)), jax.random.normal(jax.random.key(2), (N, 16))
    for dispatch in ("masked", "ragged", "capacity"):
        opts = dict(num_experts=N, top_k=3, dispatch=dispatch, capacity_factor=N / 3)
        np.testing.assert_array_equal(moe_ffn(ffn.kernels(), ffn.activate, x, c, drop_share=1e-6, **opts)[0],
                                      moe_ffn(ffn.kernels(), ffn.activate, x, c, drop_share=0.0, **opts)[0])


def test_moefy_is_deterministic_for_a_key(lm):
    _, params, _ = lm
    a = inf.moefy_params(params, N, key=jax.random.key(5))
    b = inf.moefy_params(params, N, key=jax.random.key(5))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_allclose(a[1], centres_from_params(a[0], N))


def test_own_structure_keeps_the_checkpoint_order(lm):
    _, params, _ = lm
    meta = {"method": {"controller": {"phase": "dense", "phases": [["dense", 0, 8], ["sparse", 8, 18]]}}}
    assert trained_sparse(meta) and not trained_sparse({}) and not trained_sparse({"method": {"method": "dense"}})
    assert trained_sparse({"method": {"method": "smoe"}}) and not trained_sparse({"method": {"method": "pld"}})
    assert trained_sparse({"ssd": {"method": "moe_dropout"}})  # checkpoints saved before the key was renamed
    got, centres, used = inf.inference_experts(params, N, sparse_trained=trained_sparse(meta))
    assert used == "own" and got is params
    np.testing.assert_array_equal(centres, centres_from_params(params, N))


def test_bad_input_is_a_user_error(lm):
    _, params, _ = lm
    for ks in ([0], [N + 1], []):
        with pytest.raises(UserError, match="k must be in 1..8"):
            inf.check_ks(ks, N)
    with pytest.raises(UserError, match="drop shares"):
        inf.check_drop_shares([1.0])
    with pytest.raises(UserError, match="must divide d_ff=64"):
        inf.inference_experts(params, 6)
    with pytest.raises(UserError, match="structure"):
        inf.inference_experts(params, N, structure="nope")
    assert inf.check_ks([4, 1, 4], N) == [1, 4]
    assert inf.default_ks(32, 6) == [1, 2, 4, 6, 8, 16, 32]
    assert inf.experts_per_token(4, 0.75, 32) == 1.0

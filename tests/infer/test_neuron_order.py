"""Co-activation layout and block gathers (issue 22): the permutation leaves the model's
function unchanged; threshold and predictor decoding with block gathers, permuted or not,
equal the masked forward of the unpermuted model; block shares by hand; the layout finds
planted blocks."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.infer import Decoder, place
from sparsity_jax.infer.budget import calibrate, measured_candidates, union_counts
from sparsity_jax.infer.neuron_order import (
    block_shares, coactivation_order, coactivation_permutation, permute_params, permute_sparsify,
)
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from tests.infer.test_decode import full_logits, tiny
from tests.infer.test_sparse import NEW, PROMPTS, batch_of, mesh_tp, thresholds


def test_block_shares_by_hand():
    a = np.zeros((2, 8), bool)
    a[0, [0, 5]] = True  # blocks of 2: {0,1} and {4,5}; of 4: both halves
    a[1, [2, 3]] = True  # blocks of 2: {2,3}; of 4: the first half
    neuron, blocks = block_shares(a, (2, 4, 8))
    assert neuron == 4 / 16
    assert blocks == {2: (2 / 4 + 1 / 4) / 2, 4: (2 / 2 + 1 / 2) / 2, 8: 1.0}
    cand = np.zeros((2, 8), bool)
    cand[0, 0] = cand[1, 7] = True
    assert set(union_counts(cand, 1, block=4)) == {4} and set(union_counts(cand, 2, block=4)) == {8}


def test_layout_finds_planted_blocks():
    rng = np.random.default_rng(0)
    hidden = rng.random((256, 16)) < 0.2  # 16 hidden blocks of 8 neurons, each active on 20% of tokens
    act = np.repeat(hidden, 8, axis=1)[:, rng.permutation(128)]
    neuron, before = block_shares(act, (8,))
    assert before[8] > 2.5 * neuron  # scattered: most blocks hold some active neuron
    perm = coactivation_permutation(act, 8)
    assert sorted(perm) == list(range(128))
    assert block_shares(act[:, perm], (8,))[1][8] == pytest.approx(neuron)  # every block full or empty


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_permutation_leaves_dense_logits_unchanged(activation):
    model = tiny(activation)
    graphdef, params = nnx.split(model)
    perms = [np.random.default_rng(i).permutation(128) for i in range(2)]
    pure = nnx.to_pure_dict(params)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 61)

    @jax.jit
    def run(p):
        m = nnx.merge(graphdef, p)
        logits, rec = m.apply(tokens, record="scores")
        return logits, rec["scores"]

    (ref, scores), (out, scores_p) = run(pure), run(permute_params(pure, perms))
    # every neuron's score is the same dot product, only moved: bitwise equal after the permutation
    np.testing.assert_array_equal(np.asarray(scores_p[0]), np.asarray(scores[0])[..., perms[0]])
    # the logits differ only by the float32 summation order over the F neurons
    err = np.abs(np.asarray(out) - np.asarray(ref)).max()
    assert err <= 1e-6 * np.abs(np.asarray(ref)).max(), err


@functools.cache
def threshold_setup(activation: str):
    model = tiny(activation)
    mesh = mesh_tp()
    t_L, calib = thresholds(model, 0.08)
    ref_dec = Decoder(*place(model, mesh), mesh, Sparsify(mode="threshold", threshold=t_L))
    perms = coactivation_order(measured_candidates(ref_dec, [calib]), 8)
    return model, mesh, t_L, calib, perms


@pytest.mark.parametrize("activation,block,permuted,scan", [
    ("relu2", 8, True, False), ("relu2", 0, True, False), ("swiglu", 8, False, False), ("drelu", 8, False, False),
    ("swiglu", 8, True, True)])
def test_threshold_block_decoding_equals_the_masked_forward(activation, block, permuted, scan):
    """drelu: the gate's Cauchy–Schwarz candidates, then relu(W_in x) of the chosen blocks
    (the FFN's `gated_scores`, which the block path once skipped). `scan`: the stacked,
    permuted tables and block kernels run under the layer scan."""
    model, mesh, t_L, calib, perms = threshold_setup(activation)
    graphdef, params = place(tiny(activation, scan=scan), mesh)
    if permuted:
        params = permute_params(params, perms)
    dec = Decoder(graphdef, params, mesh, Sparsify(mode="threshold", threshold=t_L), block=block, chunk=32)
    if activation in ("swiglu", "drelu"):  # gated: the Cauchy–Schwarz candidates take the whole shard
        budgets = ((64,),) * 2
    elif block:  # random weights and tokens: the union of 2 rows touches most blocks of 8 neurons
        budgets = ((48, 56),) * 2
    else:
        budgets = calibrate(dec, [calib], rows=2, quantiles=(0.5, 1.0), margin=0.5, align=8)
    dec.set_budgets(budgets)
    assert all(len(b) for b in dec.budgets) and all(k % max(block, 1) == 0 for b in dec.budgets for k in b)
    gen = dec.generate(PROMPTS, NEW, keep_logits=True)
    st = gen.stats
    assert np.all(st["dense"] < st["tokens"]) and np.all(st["kept"] > 0)  # most steps sparse (dense: exact too)
    assert np.all(st["read"] >= st["union"]) and np.all(st["read"] % max(block, 1) == 0)
    ref = full_logits(model, PROMPTS, gen.tokens, sparsify=Sparsify(mode="threshold", threshold=t_L))
    for b in range(2):
        np.testing.assert_allclose(gen.logits[b], ref[b], atol=1e-5, rtol=1e-5)


def test_predictor_block_decoding_permuted_equals_the_unpermuted_masked_form():
    model, mesh, _, calib, perms = threshold_setup("relu2")
    k = jax.random.split(jax.random.key(3), 2)
    sp = Sparsify(mode="predicted", predictor=PredictorSpec(jax.random.normal(k[0], (2, 32, 4)) / 6,
                                                            jax.random.normal(k[1], (2, 4, 128)), -jnp.ones((2, 128))))
    graphdef, params = place(model, mesh)
    ref_dec = Decoder(graphdef, params, mesh, sp)
    dec = Decoder(graphdef, permute_params(params, perms), mesh, permute_sparsify(ref_dec.sparsify, perms),
                  budgets=((48, 64),) * 2, block=8, chunk=32)
    gen = dec.generate(PROMPTS, NEW, keep_logits=True)
    seqs = jnp.asarray([list(pr) + list(g[:-1]) for pr, g in zip(PROMPTS, gen.tokens)])
    logits_BxTxV, cand_LxBxTxF = ref_dec.candidates(batch_of(seqs))  # unpermuted, masked predictor FFN
    p = len(PROMPTS[0])
    assert np.all(gen.stats["dense"] == 0)
    np.testing.assert_allclose(gen.logits, np.asarray(logits_BxTxV)[:, p - 1:], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(gen.stats["kept"], np.asarray(cand_LxBxTxF)[:, :, p:].sum((1, 2, 3)))
    union = np.asarray(cand_LxBxTxF)[:, :, p:].any(1).sum((1, 2))  # (L,) union neurons summed over steps
    np.testing.assert_array_equal(gen.stats["union"], union)


def test_a_scanned_models_stacked_blocks_permute_as_its_layers_do():
    """`permute_params` on a `scan_layers` model's stacked blocks equals the per-layer
    permutation of the same (identically drawn) unrolled model, restacked."""
    from sparsity_jax.nn.model import LM, ModelConfig

    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, d_ff=24, activation="swiglu")
    pure = lambda c: nnx.to_pure_dict(nnx.state(LM(c, rngs=nnx.Rngs(3)), nnx.Param))  # noqa: E731
    flat, stacked = pure(cfg), pure(dataclasses.replace(cfg, scan_layers=True))
    perms = [np.random.default_rng(i).permutation(24) for i in range(2)]
    want, got = permute_params(flat, perms)["blocks"], permute_params(stacked, perms)["blocks"]["ffn"]
    for name in ("w_in", "w_gate", "w_out"):
        np.testing.assert_array_equal(np.asarray(got[name]), np.stack([np.asarray(want[i]["ffn"][name]) for i in range(2)]))
        assert not np.array_equal(np.asarray(got[name]), np.asarray(stacked["blocks"]["ffn"][name]))

"""Sparse decode FFNs against the masked modes, on 8 fake CPU devices with the FFN
tensor-sharded 2 ways: threshold decoding == the LM's masked threshold mode; overflowing
steps are counted and run dense; the gathered predicted mode and the blocked gathers against
numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.infer import Decoder, kernels, place
from sparsity_jax.infer.budget import budgets_for, calibrate, union_counts
from sparsity_jax.infer.decode import STATS
from sparsity_jax.infer.gathered import TABLE_KEYS, Act, build_tables, check_predictor, decode_sparsify, layer_ffn
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from tests.infer.test_decode import full_logits, tiny

PROMPTS = [[5, 1, 2, 3, 4, 9], [7, 8, 9, 10, 11, 12]]  # equal lengths: decode steps share positions
NEW = 7


def mesh_tp():
    from sparsity_jax.devices.sharding import make_mesh

    return make_mesh(data=4, fsdp=1, tensor=2)


def batch_of(tokens_BxT):
    b, t = tokens_BxT.shape
    return {"inputs": tokens_BxT, "segment_ids": jnp.ones_like(tokens_BxT), "loss_weights": jnp.ones((b, t)),
            "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}


def thresholds(model, share: float):
    """Per-layer thresholds keeping about `share` of the neuron magnitudes of random tokens."""
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, 61)
    graphdef, params = nnx.split(model)

    @jax.jit
    def quantiles(params):
        m = nnx.merge(graphdef, params)
        _, rec = m.apply(tokens, record="scores")
        norms_LxF = jnp.stack([b.ffn.out_norms() for b in m.blocks])
        mag = jnp.abs(rec["scores"]) * norms_LxF[:, None, None, :]
        return jnp.quantile(mag.reshape(mag.shape[0], -1), 1 - share, axis=1)

    return quantiles(params), batch_of(tokens)


@functools.cache
def threshold_decoder(activation: str, scan: bool = False) -> tuple:
    """(model, decoder at the 0.3-share thresholds without budgets, thresholds, a calibration
    batch); `scan`: the decoder runs the scanned model of the same draws."""
    model = tiny(activation)
    mesh = mesh_tp()
    t_L, calib = thresholds(model, 0.3)
    # 24-row blocks: the calibrated budgets (multiples of 8) pad their last block
    dec = Decoder(*place(tiny(activation, scan=scan), mesh), mesh, Sparsify(mode="threshold", threshold=t_L), chunk=24)
    return model, dec, t_L, calib


@pytest.mark.parametrize("activation,scan", [("relu2", False), ("swiglu", False), ("drelu", False), ("relu2", True),
                                             ("swiglu", True)])
def test_threshold_decoding_equals_the_masked_threshold_mode(activation, scan):
    """Scanned: the layers decode under the scan, with the gated FFN's equal budgets and
    relu2's per-layer calibrated ones alike (`test_per_layer_budgets_decode_under_one_scan`)."""
    model, dec, t_L, calib = threshold_decoder(activation, scan)
    if activation in ("swiglu", "drelu"):  # the Cauchy–Schwarz candidates of a gated FFN: the whole shard here
        budgets = ((64,),) * 2
    else:
        budgets = calibrate(dec, [calib], rows=2, quantiles=(0.5, 1.0), margin=0.5, align=8)
        assert all(0 < len(b) and b[-1] < 64 for b in budgets), budgets
    dec.set_budgets(budgets)
    gen = dec.generate(PROMPTS, NEW, keep_logits=True)
    st = gen.stats
    assert np.all(st["dense"] == 0) and float(st["tokens"]) == 2 * (NEW - 1)
    share = st["kept"] / float(st["tokens"]) / 128
    assert np.all((share > 0.05) & (share < 0.6)), share
    ref = full_logits(model, PROMPTS, gen.tokens, sparsify=Sparsify(mode="threshold", threshold=t_L))
    for b in range(2):
        np.testing.assert_allclose(gen.logits[b], ref[b], atol=1e-5, rtol=1e-5)


def test_overflowing_steps_are_counted_and_run_dense():
    _, dec, _, _ = threshold_decoder("relu2")
    dec.set_budgets(((38,), (34, 36)))
    gen = dec.generate(PROMPTS, NEW, keep_logits=True)
    # expected: the candidates of the full sequences at the decode positions, union over
    # the two rows, the fuller of the two 64-neuron shards against each layer's budgets
    p = len(PROMPTS[0])
    seqs = jnp.asarray([list(pr) + list(g[:-1]) for pr, g in zip(PROMPTS, gen.tokens)])
    logits_BxTxV, cand_LxBxTxF = dec.candidates(batch_of(seqs))  # the masked threshold form
    steps = np.asarray(cand_LxBxTxF)[:, :, p:]
    fullest_LxS = steps.any(1).reshape(2, NEW - 1, 2, 64).sum(-1).max(-1)
    np.testing.assert_array_equal(gen.stats["over"], 2 * np.sum(fullest_LxS > np.array([[38], [34]]), 1))
    np.testing.assert_array_equal(gen.stats["dense"], 2 * np.sum(fullest_LxS > np.array([[38], [36]]), 1))
    assert 0 < gen.stats["dense"][1] < gen.stats["over"][1] < 2 * (NEW - 1)  # some steps in each bucket
    # the dense fallback never changes the result
    np.testing.assert_allclose(gen.logits, np.asarray(logits_BxTxV)[:, p - 1:], atol=1e-5, rtol=1e-5)


def test_per_layer_budgets_decode_under_one_scan():
    """Layers whose budgets differ share their sorted union as one static under the scan,
    each allowed only its own: the same tokens, logits and per-layer statistics (overflows,
    dense steps, rows computed) as the unrolled model, and one switch over the budgets in
    the compiled step where the unrolled one has a switch per layer."""
    decs = [threshold_decoder("relu2", scan)[1] for scan in (False, True)]
    for dec in decs:
        dec.set_budgets(((38,), (34, 36)))
    unrolled, scanned = (dec.generate(PROMPTS, NEW, keep_logits=True) for dec in decs)
    np.testing.assert_array_equal(scanned.tokens, unrolled.tokens)
    np.testing.assert_allclose(scanned.logits, unrolled.logits, atol=1e-5, rtol=1e-5)
    for k in STATS:
        np.testing.assert_array_equal(scanned.stats[k], unrolled.stats[k], err_msg=k)
    assert 0 < unrolled.stats["over"][1] < 2 * (NEW - 1)  # layer 1 used both of its budgets, or ran dense
    switches = [sum(" conditional(" in line for line in next(iter(dec._steps.values())).as_text().splitlines())
                for dec in decs]
    assert switches == [2, 1], switches


def np_predicted_ffn(ffn, arr, x):
    """numpy: the FFN with only the neurons of sigmoid(W2·(W1·x) + b) > 0.5, and that mask."""
    x = np.asarray(x, np.float64)
    keep = 1 / (1 + np.exp(-((x @ arr["w1"]) @ arr["w2"] + arr["b"]))) > 0.5
    w = {k: np.asarray(v, np.float64) for k, v in ffn.kernels().items()}
    h = x @ w["in"]
    if "gate" in w:
        g = x @ w["gate"]
        a = g / (1 + np.exp(-g)) * h  # swiglu
    else:
        a = np.maximum(h, 0) ** 2  # relu2
    return (a * keep) @ w["out"], keep


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_predicted_mode_gathered_ffn_equals_numpy(activation):
    d, f, r = 32, 128, 4
    ffn = FFN(d, f, activation, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    arr = {"w1": rng.normal(size=(d, r)) / 4, "w2": rng.normal(size=(r, f)), "b": rng.normal(size=f) - 1}
    x = rng.normal(size=(3, d))
    y_ref, keep_ref = np_predicted_ffn(ffn, arr, x)
    check_predictor(arr["w1"][None], arr["w2"][None], arr["b"][None], 1, d, f)
    mesh = mesh_tp()
    tab = build_tables(ffn, TABLE_KEYS["predicted"][ffn.act.gated])
    stacked = PredictorSpec(arr["w1"][None], arr["w2"][None], arr["b"][None])
    sp = jax.tree.map(lambda v: v[0], decode_sparsify(Sparsify(mode="predicted", predictor=stacked), 1, d, f))
    x32 = jnp.asarray(x, jnp.float32)
    run = jax.jit(functools.partial(layer_ffn, act=Act.of(ffn), mesh=mesh, axis="tensor"), static_argnames="budgets")
    y_full, keep, cand = run(sp, tab, x32)
    np.testing.assert_array_equal(np.asarray(cand), keep_ref)
    np.testing.assert_array_equal(np.asarray(keep), keep_ref)
    np.testing.assert_allclose(np.asarray(y_full), y_ref, atol=1e-5, rtol=1e-5)
    per_shard = keep_ref.any(0).reshape(2, f // 2).sum(-1).max()
    y_sparse, st = run(sp, tab, x32, budgets=(int(per_shard),))
    np.testing.assert_allclose(np.asarray(y_sparse), y_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(st["kept_N"]), keep_ref.sum(-1))
    assert not bool(st["dense"]) and int(st["rows"]) == 2 * per_shard


@pytest.mark.parametrize("scan", [False, True])
def test_predictor_decoding_equals_its_masked_form(scan):
    """Scanned: the predictor's stacked weights and the tables are the scan's per-layer inputs."""
    model = tiny("relu2", scan=scan)
    mesh = mesh_tp()
    k = jax.random.split(jax.random.key(3), 2)
    predictor = PredictorSpec(jax.random.normal(k[0], (2, 32, 4)) / 6, jax.random.normal(k[1], (2, 4, 128)),
                              -jnp.ones((2, 128)))
    dec = Decoder(*place(model, mesh), mesh, Sparsify(mode="predicted", predictor=predictor), budgets=((48,), (48,)),
                  chunk=16)
    sparse = dec.generate(PROMPTS, NEW, keep_logits=True)
    seqs = jnp.asarray([list(pr) + list(g[:-1]) for pr, g in zip(PROMPTS, sparse.tokens)])
    logits_BxTxV, cand_LxBxTxF = dec.candidates(batch_of(seqs))  # full sequences, masked predictor FFN
    p = len(PROMPTS[0])
    assert np.all(sparse.stats["dense"] == 0)
    np.testing.assert_allclose(sparse.logits, np.asarray(logits_BxTxV)[:, p - 1:], atol=1e-5, rtol=1e-5)
    # relu2: a predicted neuron is kept unless its score a is exactly 0, which the stats do not know
    np.testing.assert_array_equal(sparse.stats["kept"], np.asarray(cand_LxBxTxF)[:, :, p:].sum((1, 2, 3)))


@pytest.mark.parametrize("chunk", [0, 5, 16, 37, 64])
def test_single_neuron_gathers_are_the_block_kernels_at_b1_and_equal_numpy(chunk):
    """The decode FFN's single-neuron path reads blocks of b = 1 (`sparse_ffn`), gathered
    `chunk` rows at a time (the last group padded)."""
    rng = np.random.default_rng(chunk)
    w, x, a = rng.normal(size=(50, 12)), rng.normal(size=(3, 12)), rng.normal(size=(3, 37))
    idx = np.sort(rng.choice(50, 37, replace=False))
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    w_Fx1xD, idx_K = f32(w)[:, None, :], jnp.asarray(idx, jnp.int32)
    h = jax.jit(functools.partial(kernels.block_up, kernel="xla", chunk=chunk))(f32(x), w_Fx1xD, idx_K)
    y = jax.jit(functools.partial(kernels.block_down, kernel="xla", chunk=chunk))(f32(a), w_Fx1xD, idx_K)
    np.testing.assert_allclose(np.asarray(h), x @ w[idx].T, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y), a @ w[idx], atol=1e-5, rtol=1e-5)


def test_generation_shares_by_hand():
    from sparsity_jax.infer.decode import Generation

    # 2 rows × 3 decode steps = 6 tokens, F = 10: layer 0 kept 12 neurons over 6 tokens and
    # multiplied 15 rows over 3 steps; layer 1 kept 30 and multiplied 30
    stats = {"kept": np.array([12.0, 30.0]), "rows": np.array([15.0, 30.0]), "tokens": np.float32(6)}
    gen = Generation(np.zeros((2, 4), np.int32), None, 0.0, 1.0, stats)
    active, computed = gen.shares(10)
    np.testing.assert_allclose(active, [0.2, 0.5])
    np.testing.assert_allclose(computed, [0.5, 1.0])


def test_budgets_from_union_counts():
    cand = np.zeros((4, 8), bool)
    cand[0, :2] = cand[1, 2:4] = cand[2, 4:6] = cand[3, 6:8] = True  # disjoint pairs
    assert set(union_counts(cand, 1, shards=1)) == {2}
    assert set(union_counts(cand, 2, shards=1)) == {4}
    assert set(union_counts(cand, 2, shards=2)) <= {2, 4} and union_counts(cand, 4, shards=2).max() == 4
    assert budgets_for(np.array([10, 20, 30, 40]), 64, quantiles=(0.5, 1.0), margin=0.0, align=8) == (32, 40)
    assert budgets_for(np.array([60, 62]), 64, align=8) == ()  # never below F: the layer runs dense

"""Predictors: labels, the recorded FFN inputs, training on a planted low-rank rule, the
predicted FFN mode against numpy, merging per-batch metrics, save / load."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.predictivity import predictor_metrics
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from sparsity_jax.predict import lowrank as pm
from sparsity_jax.predict import store
from sparsity_jax.predict.data import TokenSet, active_labels
from sparsity_jax.predict.predictor_quality import _merge, _weights
from sparsity_jax.predict.train import positive_weight, train_predictors
from sparsity_jax.devices.sharding import make_mesh
from tests.nn.test_ffn import numpy_topk


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_labels_equal_numpy_at_given_thresholds():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 5, 12)).astype(np.float32)
    norms = rng.uniform(0.5, 2, size=(3, 12)).astype(np.float32)
    t = np.array([0.0, 0.5, 1.2], np.float32)
    want = np.abs(a) * norms[:, None, None, :] > t[:, None, None, None]
    np.testing.assert_array_equal(np.asarray(active_labels(a, norms, t)), want)
    a[0, 0, 0, :3] = 0  # t = 0: exactly the non-zero activations
    np.testing.assert_array_equal(np.asarray(active_labels(a, norms, t))[0], a[0] != 0)


def test_rank_for_share_and_positive_weight_by_hand():
    # r·(d + F) + F <= 0.04 · 2·128·512 = 5242.88  →  r = (5242.88 − 512) // 640 = 7
    assert pm.rank_for_share(128, 512, 2, 0.04, bias=True) == 7
    assert pm.rank_for_share(128, 512, 2, 0.04, bias=False) == 8
    assert pm.rank_for_share(8, 8, 2, 0.001) == 1
    labels = np.zeros((2, 4, 5), bool)
    labels[0, :, :1] = True  # 4 of 20 active → RECALL_BIAS 2 × 16 / 4
    np.testing.assert_allclose(positive_weight(labels), [8.0, 1.0])
    np.testing.assert_allclose(positive_weight(labels, 2.5), [2.5, 2.5])
    with pytest.raises(UserError, match="positive predictor rank"):
        pm.PredictorConfig(rank=0).validate()


def test_ffn_records_its_input_and_lm_stacks_it():
    cfg = ModelConfig(vocab_size=31, d_model=16, num_layers=2, num_heads=2, d_ff=24, activation="relu2")
    model = LM(cfg, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(1), (2, 7), 0, 31)
    _, rec = model.apply(tok, record=("inputs", "scores"))
    assert rec["inputs"].shape == (2, 2, 7, 16) and set(rec) == {"inputs", "scores"}
    for layer, blk in enumerate(model.blocks):  # the FFN of the recorded input gives the recorded scores
        np.testing.assert_allclose(np.asarray(blk.ffn.hidden(rec["inputs"][layer])[1]),
                                   np.asarray(rec["scores"][layer]), atol=1e-6)
    ffn = FFN(16, 24, "relu", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 3, 16))
    _, inter = nnx.capture(ffn, nnx.Intermediate)(x, record="inputs")
    np.testing.assert_array_equal(np.asarray(inter["inputs"].get_value()[0]), np.asarray(x))
    with pytest.raises(ValueError, match="record must be"):
        ffn(x, record=("inputs", "bogus"))


def test_predictor_learns_a_planted_low_rank_rule():
    """Labels from a rank-2 rule of x with a bias; a rank-4 predictor recovers them."""
    num_layers, n, d, f = 2, 4096, 16, 48
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_layers, n, d)).astype(np.float32)
    u, v = rng.normal(size=(num_layers, d, 2)), rng.normal(size=(num_layers, 2, f))
    c = rng.uniform(-3, -1, size=(num_layers, 1, f))  # ~10-30% active
    labels = np.einsum("lnd,ldr,lrf->lnf", x, u, v) + c > 0
    cfg = pm.PredictorConfig(rank=4, steps=300, batch_tokens=512, lr=3e-2, pos_weight=1.0).validate()
    params, info = train_predictors(TokenSet(x[:, :3072], labels[:, :3072]), cfg, 4, make_mesh(data=8))
    assert params["w1"].shape == (2, 16, 4) and info.tokens == 3072
    scores = np.asarray(pm.scores(params, jnp.asarray(x[:, 3072:])))[:, None]  # held-out tokens, (L, 1, N, F)
    m = predictor_metrics(scores, labels[:, None, 3072:])
    assert np.all(np.asarray(m.recall) > 0.95) and np.all(np.asarray(m.precision) > 0.9), m


def _predictor(d, f, r, seed=0, num_layers=None):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    lead = () if num_layers is None else (num_layers,)
    return (jax.random.normal(k1, lead + (d, r)), jax.random.normal(k2, lead + (r, f)) / 2,
            jax.random.normal(k3, lead + (f,)))


@pytest.mark.parametrize("strategy,k", [("threshold", 0), ("topk", 5)])
@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_predicted_mode_equals_numpy_masking(activation, strategy, k):
    ffn = FFN(16, 40, activation, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 6, 16))
    w1, w2, b = _predictor(16, 40, 3)
    y = ffn(x, Sparsify(mode="predicted", predictor=PredictorSpec(w1, w2, b, strategy=strategy, k=k)))
    xs = np.asarray(x, np.float64)
    scores = np_sigmoid(xs @ np.asarray(w1, np.float64) @ np.asarray(w2, np.float64) + np.asarray(b, np.float64))
    keep = scores > 0.5 if strategy == "threshold" else numpy_topk(scores, k)
    assert 0 < keep.mean() < 1
    w_in, w_out = np.asarray(ffn.w_in[...], np.float64), np.asarray(ffn.w_out[...], np.float64)
    if activation == "swiglu":
        g = xs @ np.asarray(ffn.w_gate[...], np.float64)
        a = g * np_sigmoid(g) * (xs @ w_in)
    else:
        a = np.maximum(xs @ w_in, 0) ** 2
    np.testing.assert_allclose(np.asarray(y), np.where(keep, a, 0) @ w_out, atol=1e-4, rtol=1e-4)


def test_predicted_mode_slices_stacked_predictors_per_layer():
    """Layer 0's predictor keeps every neuron, layer 1's none: the LM equals a unit mask
    of ones in layer 0 and zeros in layer 1."""
    cfg = ModelConfig(vocab_size=31, d_model=16, num_layers=2, num_heads=2, d_ff=24)
    model = LM(cfg, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(1), (2, 7), 0, 31)
    w1, w2, _ = _predictor(16, 24, 2, num_layers=2)
    b = jnp.stack([jnp.full(24, 1e3), jnp.full(24, -1e3)])
    pred = model(tok, sparsify=Sparsify(mode="predicted", predictor=PredictorSpec(w1 * 0, w2, b)))
    masked = model(tok, sparsify=Sparsify(mode="unit_mask", unit_mask=jnp.stack([jnp.ones(24), jnp.zeros(24)])))
    np.testing.assert_allclose(np.asarray(pred), np.asarray(masked), atol=1e-5)
    with pytest.raises(ValueError, match="needs Sparsify"):
        model(tok, sparsify=Sparsify(mode="predicted"))


def test_per_batch_metrics_merge_to_the_metrics_of_all_tokens():
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(2, 6, 8, 20)).astype(np.float32)
    labels = rng.uniform(size=(2, 6, 8, 20)) < 0.3
    labels[:, 0, :3] = False  # tokens without active neurons are left out of the recall mean
    scores[:, 1, :2] = 0.1  # ... and those without predicted ones out of the precision mean
    real = rng.uniform(size=(6, 8)) < 0.8
    for strategy, k in (("threshold", None), ("topk", 4)):
        whole = predictor_metrics(scores, labels, real, strategy=strategy, k=k)
        parts = [(predictor_metrics(scores[:, s], labels[:, s], real[s], strategy=strategy, k=k),
                  np.asarray(_weights(scores[:, s], labels[:, s], real[s], strategy=strategy, k=k)))
                 for s in (slice(0, 2), slice(2, 6))]
        merged = _merge(parts)
        for name in ("recall", "precision", "prediction_sparsity", "true_sparsity"):
            np.testing.assert_allclose(merged[name], np.asarray(getattr(whole, name)), atol=1e-5)


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    params = pm.init_params(jax.random.key(4), 3, 16, 40, 5)
    params["b"] = jax.random.normal(jax.random.key(5), (3, 40))
    path = store.predictor_dir(str(tmp_path), 30, 0.2)
    assert str(path).endswith("predictors/30_cett0.2")
    store.save(path, params, {"rank": 5, "cett": 0.2})
    with pytest.raises(UserError, match="already saved"):  # never replaced
        store.save(path, params, {"rank": 5, "cett": 0.2})
    loaded, meta = store.load(path)
    assert meta["rank"] == 5 and meta["shapes"]["w2"] == [3, 5, 40]
    x = jax.random.normal(jax.random.key(6), (3, 11, 16))
    np.testing.assert_array_equal(np.asarray(pm.scores(loaded, x)), np.asarray(pm.scores(params, x)))
    with pytest.raises(UserError, match="no saved predictor"):
        store.load(str(tmp_path / "nothing"))

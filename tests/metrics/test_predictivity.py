"""Predictor metrics (ReLU² §4 (2), §5.2) vs a loop-per-token numpy transcription of the
definitions, by hand, and under plain / jit-sharded / shard_map / pmap calls."""

import jax
import numpy as np
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.predictivity import predicted_active, predictor_metrics
from tests.metrics.call_styles import four_call_styles

L, B, T, F = 2, 8, 16, 32
K = 5
CONFIGS = [(strategy, k, reduction) for strategy, k in (("threshold", None), ("topk", K))
           for reduction in ("token", "pooled")]
FIELDS = ("recall", "precision", "prediction_sparsity", "true_sparsity", "predicted_active_per_token")


# ---- the definitions, transcribed (one token at a time) ----
def ref_predicted(score_F, strategy, k):
    if strategy == "threshold":
        return [f for f in range(len(score_F)) if score_F[f] > 0.5]
    order = sorted(range(len(score_F)), key=lambda f: (-score_F[f], f))  # ties: lower index first
    return order[:k]


def ref_metrics(scores_BxTxF, labels_BxTxF, token_mask_BxT, strategy, k, reduction):
    recalls, precisions, pred_inactive, true_inactive, n_pred = [], [], [], [], []
    hits_sum = true_sum = pred_sum = 0
    for b in range(scores_BxTxF.shape[0]):
        for t in range(scores_BxTxF.shape[1]):
            if not token_mask_BxT[b, t]:
                continue
            pred = set(ref_predicted(scores_BxTxF[b, t], strategy, k))
            true = {f for f in range(F) if labels_BxTxF[b, t, f]}
            hits = len(pred & true)
            if true:
                recalls.append(hits / len(true))
            if pred:
                precisions.append(hits / len(pred))
            pred_inactive.append((F - len(pred)) / F)
            true_inactive.append((F - len(true)) / F)
            n_pred.append(len(pred))
            hits_sum, true_sum, pred_sum = hits_sum + hits, true_sum + len(true), pred_sum + len(pred)
    if reduction == "token":
        recall, precision = np.mean(recalls), np.mean(precisions)
    else:
        recall, precision = hits_sum / true_sum, hits_sum / pred_sum
    return dict(recall=recall, precision=precision, prediction_sparsity=np.mean(pred_inactive),
                true_sparsity=np.mean(true_inactive), predicted_active_per_token=np.mean(n_pred))


def reference(scores, labels, token_mask, strategy, k, reduction):
    if scores.ndim == 3:
        return ref_metrics(scores, labels, token_mask, strategy, k, reduction)
    layers = [ref_metrics(s, lab, token_mask, strategy, k, reduction) for s, lab in zip(scores, labels)]
    return {f: np.array([layer[f] for layer in layers]) for f in FIELDS}


def assert_close(got, want, where=""):
    for f in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(got, f)), want[f], rtol=0, atol=1e-6, err_msg=f"{where} {f}")


# ---- data: ragged padding, interior padding, a device with padding only, ties ----
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    labels = rng.random((L, B, T, F)) < np.array([0.15, 0.4])[:, None, None, None]
    # Scores on a 0.05 grid: many ties (top-k tie-breaking) and exact 0.5s (strict >).
    scores = np.round(np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1) * 20) / 20
    scores = scores.astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[7] = T, 0  # device 7 holds padding only
    token_mask = np.arange(T) < lengths[:, None]
    token_mask[2] = rng.random(T) < 0.5  # non-prefix padding
    labels[:, 0, 3] = False  # real tokens with no active label
    scores[:, 1, 2] = 0.2  # a real token with no predicted-active neuron (threshold)
    labels[:, 5, :] |= ~token_mask[5][:, None]  # garbage on padding must not count
    scores[:, 5, ~token_mask[5]] = 1.0
    assert (scores == 0.5).any()
    return scores, labels, token_mask


def all_configs(scores, labels, token_mask, axis_name=None):
    return {cfg: predictor_metrics(scores, labels, token_mask, axis_name, strategy=cfg[0], k=cfg[1],
                                   reduction=cfg[2]) for cfg in CONFIGS}


def test_four_call_styles_match_the_definitions(batch):
    scores, labels, token_mask = batch
    want = {cfg: reference(scores, labels, token_mask, *cfg) for cfg in CONFIGS}
    styles = four_call_styles(all_configs, batch, batch_axes=(1, 1, 0))
    for name, got in styles.items():
        for cfg in CONFIGS:
            assert_close(got[cfg], want[cfg], where=f"{name} {cfg}")
            assert got[cfg].recall.shape == (L,)
    # Without a layer axis: scalars, the same as layer 1.
    one = predictor_metrics(scores[1], labels[1], token_mask, strategy="topk", k=K)
    assert_close(one, reference(scores[1], labels[1], token_mask, "topk", K, "token"), where="3-D")
    assert one.recall.shape == ()


# ---- hand examples ----
def hand_batch():
    """One sequence, F = 4, 3 real tokens and 1 padding token.

    token 0: labels {0, 1},    scores .9 .2 .7 .1   -> predicted {0, 2}:    hits 1
    token 1: labels {},        scores .6 .1 .1 .1   -> predicted {0}:       hits 0
    token 2: labels {0, 1, 2}, scores .8 .9 .3 .55  -> predicted {0, 1, 3}: hits 2
    token 3: padding (all labels, all scores .9) — never counts.
    """
    labels = np.array([[[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]], bool)
    scores = np.array([[[.9, .2, .7, .1], [.6, .1, .1, .1], [.8, .9, .3, .55], [.9, .9, .9, .9]]], np.float32)
    return scores, labels, np.array([[1, 1, 1, 0]], bool)


def test_pooled_hand_example_is_dejavus_arithmetic():
    got = predictor_metrics(*hand_batch(), reduction="pooled")
    # recall = Σ|P ∩ A| / Σ|A| = (1 + 0 + 2) / (2 + 0 + 3); precision = 3 / (2 + 1 + 3);
    # predicted active per token ("classifier sparsity") = (2 + 1 + 3) / 3 tokens.
    assert_close(got, dict(recall=3 / 5, precision=3 / 6, prediction_sparsity=6 / 12,
                           true_sparsity=7 / 12, predicted_active_per_token=2.0))


def test_token_mean_leaves_out_tokens_with_no_active_label():
    got = predictor_metrics(*hand_batch())
    # recall: tokens 0 and 2 only, (1/2 + 2/3) / 2 = 7/12; counting token 1 as 0 would
    # give 7/18. precision: every token predicts something, (1/2 + 0/1 + 2/3) / 3.
    assert float(got.recall) == pytest.approx(7 / 12, abs=1e-6)
    assert float(got.recall) != pytest.approx(7 / 18, abs=1e-3)
    assert_close(got, dict(recall=7 / 12, precision=7 / 18, prediction_sparsity=0.5,
                           true_sparsity=7 / 12, predicted_active_per_token=2.0))


def test_topk_exactly_k_ties_to_lower_index():
    scores = np.array([[[0.3, 0.7, 0.7, 0.7, 0.1]]], np.float32)
    labels = np.array([[[0, 0, 1, 1, 0]]], bool)
    np.testing.assert_array_equal(predicted_active(scores, "topk", 2)[0, 0], [0, 1, 1, 0, 0])
    got = predictor_metrics(scores, labels, strategy="topk", k=2)  # predicted {1, 2}: hit 2
    assert_close(got, dict(recall=0.5, precision=0.5, prediction_sparsity=0.6, true_sparsity=0.6,
                           predicted_active_per_token=2.0))
    none = predictor_metrics(scores, labels, strategy="topk", k=0)  # no prediction: no precision
    assert_close(none, dict(recall=0.0, precision=0.0, prediction_sparsity=1.0, true_sparsity=0.6,
                            predicted_active_per_token=0.0))


def test_no_real_token_gives_zeros_and_bad_input_raises():
    scores, labels, _ = hand_batch()
    got = predictor_metrics(scores, labels, np.zeros((1, 4), bool))
    assert all(float(v) == 0.0 for v in got)
    with pytest.raises(UserError, match="k only with strategy='topk'"):
        predictor_metrics(scores, labels, k=2)
    with pytest.raises(UserError, match="between 0 and F = 4"):
        predictor_metrics(scores, labels, strategy="topk", k=5)
    with pytest.raises(UserError, match="between 0 and F"):
        predictor_metrics(scores, labels, strategy="topk")
    with pytest.raises(UserError, match="strategy"):
        predictor_metrics(scores, labels, strategy="top-k")
    with pytest.raises(UserError, match="reduction"):
        predictor_metrics(scores, labels, reduction="mean")
    with pytest.raises(UserError, match="labels with the shape"):
        predictor_metrics(scores, labels[..., :3])
    with pytest.raises(UserError, match="token_mask"):
        predictor_metrics(scores, labels, np.ones((1, 3), bool))
    with pytest.raises(UserError, match=r"\(B, T, F\)"):
        predictor_metrics(scores[0], labels[0])

"""Activation-predictor quality: recall, precision and prediction sparsity.

ReLU² §4 "(2) Predictivity" defines the metrics. A predictor gives each neuron of each
token a score in [0, 1] (App. A.2: sigmoid of a low-rank MLP of the FFN input);
`labels` are the true active neurons (‖n_i‖ above the layer threshold). Neurons are
predicted active by one of two strategies (§5.2): "threshold" (score > 0.5) or "topk"
(the k highest scores per token). Padding (`token_mask` False) never counts; with
`axis_name` (inside shard_map / pmap) every numerator and denominator is psum'd, so
results are global.
"""
from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.cett import run_auto
from sparsity_jax.metrics.reduce import AxisName, check_batch_rank, psum, real_tokens, safe_div
from sparsity_jax.nn.sparsify import score_keep

Array = jax.Array

STRATEGIES = ("threshold", "topk")
REDUCTIONS = ("token", "pooled")


class PredictorMetrics(NamedTuple):
    """Predictor quality; each field is a scalar, or (L,) for inputs with a layer axis."""

    recall: Array  # correctly predicted active / truly active
    precision: Array  # correctly predicted active / predicted active
    prediction_sparsity: Array  # predicted inactive / F
    true_sparsity: Array  # truly inactive / F
    predicted_active_per_token: Array  # mean #predicted-active neurons per real token


def predicted_active(scores: Array, strategy: str = "threshold", k: int | None = None) -> Array:
    """The neurons a predictor marks active: bool with the shape of `scores` (..., F).

    "threshold": score > 0.5. "topk": exactly the k highest scores of each token, ties
    broken towards the lower neuron index (`nn.sparsify.topk_keep`, the FFN's rule).
    """
    scores = jnp.asarray(scores)
    k = _check_strategy(strategy, k, scores.shape[-1])
    return score_keep(scores, strategy, k or 0)  # the rule of `nn.sparsify` (top-k: scores ≥ 0, |s| = s)


def _check_strategy(strategy: str, k, num_units: int) -> int | None:
    """Validates (strategy, k); returns k as a Python int (None for "threshold")."""
    if strategy == "threshold":
        if k is not None:
            raise UserError("Pass k only with strategy='topk'; the threshold strategy uses score > 0.5.")
        return None
    if strategy != "topk":
        raise UserError(f"Pass strategy as one of {STRATEGIES}; got {strategy!r}.")
    try:
        k = None if isinstance(k, bool) else operator.index(k)
    except TypeError:
        k = None
    if k is None or not 0 <= k <= num_units:
        raise UserError(f"Pass k as an integer between 0 and F = {num_units} for strategy='topk'.")
    return k


def _check(scores: Array, labels: Array, token_mask: Array | None) -> Array:
    """Validates shapes; returns `token_mask_BxT` as bool."""
    check_batch_rank(scores, "scores and labels")
    if labels.shape != scores.shape:
        raise UserError(f"Pass labels with the shape of scores {scores.shape}; got {labels.shape}.")
    return real_tokens(token_mask, scores.shape[-3:-1], f"scores {scores.shape}")


def predictor_metrics(
    scores: Array,
    labels: Array,
    token_mask: Array | None = None,
    axis_name: AxisName = None,
    *,
    strategy: str = "threshold",
    k: int | None = None,
    reduction: str = "token",
) -> PredictorMetrics:
    """Recall, precision and prediction sparsity of an activation predictor (ReLU² §4 (2), §5.2).

    Per real token, with P its predicted-active set and A its truly active set:
    recall = |P ∩ A| / |A|, precision = |P ∩ A| / |P|, prediction sparsity =
    (F − |P|) / F, true sparsity = (F − |A|) / F.

    Args:
      scores: predictor scores in [0, 1], `scores_BxTxF` or `scores_LxBxTxF`.
      labels: true activity, bool (or non-zero = active), same shape as scores.
      token_mask: `token_mask_BxT`, True on real tokens; None = all real.
      axis_name: mapped axis name(s) inside shard_map / pmap on the local batch shard;
        None for plain or jit-sharded global arrays.
      strategy: "threshold" (score > 0.5) or "topk" (the k highest scores per token,
        exactly k, ties to the lower index).
      k: neurons predicted active per token for "topk"; must be None for "threshold".
      reduction: "token" — each metric per token, then averaged over real tokens, as
        ReLU² §4 (2) does ("per token per FFN, then averaged"); tokens with no truly
        active neuron are left out of the recall mean, tokens with no predicted-active
        neuron out of the precision mean. "pooled" — numerators and denominators are
        summed over all real tokens first (DejaVu's evaluation: recall =
        Σ|P ∩ A| / Σ|A|). The two sparsities and `predicted_active_per_token` (DejaVu's
        "classifier sparsity") are the same under both reductions, as F is constant.

    Returns:
      PredictorMetrics of float32 scalars, or (L,) with a layer axis. A mean with no
      token to average over is 0, never NaN.
    """
    if reduction not in REDUCTIONS:
        raise UserError(f"Pass reduction as one of {REDUCTIONS}; got {reduction!r}.")
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    token_mask_BxT = _check(scores, labels, token_mask)
    k = _check_strategy(strategy, k, scores.shape[-1])
    fn = functools.partial(_metrics, strategy=strategy, k=k, reduction=reduction, axis_name=axis_name)
    out = run_auto(fn, scores, labels, token_mask_BxT)
    return out if scores.ndim == 4 else PredictorMetrics(*(v[0] for v in out))


@functools.partial(jax.jit, static_argnames=("strategy", "k", "reduction", "axis_name"))
def _metrics(scores, labels, token_mask_BxT, *, strategy, k, reduction, axis_name) -> PredictorMetrics:
    scores_LxBxTxF = scores if scores.ndim == 4 else scores[None]
    labels_LxBxTxF = (labels if labels.ndim == 4 else labels[None]).astype(bool)
    num_units = scores_LxBxTxF.shape[-1]
    pred_LxBxTxF = predicted_active(scores_LxBxTxF, strategy, k)
    hits_LxBxT = jnp.sum(pred_LxBxTxF & labels_LxBxTxF, axis=-1, dtype=jnp.int32)
    n_pred_LxBxT = jnp.sum(pred_LxBxTxF, axis=-1, dtype=jnp.int32)
    n_true_LxBxT = jnp.sum(labels_LxBxTxF, axis=-1, dtype=jnp.int32)

    def real_sum(x_LxBxT):  # sum over real tokens, (L,) float32; exact per row for counts
        return jnp.sum(jnp.sum(jnp.where(token_mask_BxT, x_LxBxT, 0), axis=-1).astype(jnp.float32), axis=-1)

    n_real = psum(jnp.sum(token_mask_BxT, dtype=jnp.float32), axis_name)
    pred_total_L, true_total_L = psum((real_sum(n_pred_LxBxT), real_sum(n_true_LxBxT)), axis_name)
    if reduction == "token":
        recall_LxBxT = safe_div(hits_LxBxT.astype(jnp.float32), n_true_LxBxT)
        precision_LxBxT = safe_div(hits_LxBxT.astype(jnp.float32), n_pred_LxBxT)
        nums = (real_sum(recall_LxBxT), real_sum(n_true_LxBxT > 0),
                real_sum(precision_LxBxT), real_sum(n_pred_LxBxT > 0))
        recall_num, recall_den, precision_num, precision_den = psum(nums, axis_name)
    else:
        recall_num = precision_num = psum(real_sum(hits_LxBxT), axis_name)
        recall_den, precision_den = true_total_L, pred_total_L
    return PredictorMetrics(
        recall=safe_div(recall_num, recall_den),
        precision=safe_div(precision_num, precision_den),
        prediction_sparsity=jnp.where(n_real > 0, 1.0 - safe_div(pred_total_L, n_real * num_units), 0.0),
        true_sparsity=jnp.where(n_real > 0, 1.0 - safe_div(true_total_L, n_real * num_units), 0.0),
        predicted_active_per_token=safe_div(pred_total_L, n_real),
    )

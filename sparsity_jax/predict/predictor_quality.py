"""Evaluating predictors on validation tokens: recall and prediction sparsity (ReLU² §4 (2),
Fig. 5a–c) and end to end, the validation PPL with the predictor choosing each token's
neurons, against the dense model and the oracle threshold mode at the same CETT.

Strategies: ("threshold", None) predicts score > 0.5, ("topk", k) the k highest scores.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.metrics.predictivity import PredictorMetrics, predicted_active, predictor_metrics
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.predict import lowrank as pm
from sparsity_jax.predict.data import Batch, record_active

Strategy = tuple[str, int | None]


def strategies(ks: Sequence[int]) -> list[Strategy]:
    """The threshold strategy, then top-k for each k."""
    return [("threshold", None)] + [("topk", int(k)) for k in ks]


def default_ks(d_ff: int) -> list[int]:
    """k at prediction sparsity 1/2, 3/4, 7/8 and 15/16: F/2, F/4, F/8, F/16 (≥ 1)."""
    return sorted({max(1, d_ff // q) for q in (2, 4, 8, 16)}, reverse=True)


@jax.jit
def _scores(params, x_LxBxTxD):
    num_layers, b, t, d = x_LxBxTxD.shape
    return pm.scores(params, x_LxBxTxD.reshape(num_layers, b * t, d)).reshape(num_layers, b, t, -1)


@functools.partial(jax.jit, static_argnames=("strategy", "k"))
def _weights(scores, labels, real_BxT, *, strategy, k):
    """Tokens behind each per-token mean of `predictor_metrics` ("token" reduction), (3, L):
    real tokens with an active label (recall), with a predicted-active neuron (precision), all."""
    pred_any = jnp.any(predicted_active(scores, strategy, k), axis=-1) & real_BxT
    label_any = jnp.any(labels, axis=-1) & real_BxT
    count = functools.partial(jnp.sum, axis=(1, 2), dtype=jnp.float32)
    return jnp.stack([count(label_any), count(pred_any), count(jnp.broadcast_to(real_BxT, pred_any.shape))])


def _merge(parts: list[tuple[PredictorMetrics, np.ndarray]]) -> dict[str, list[float]]:
    """Per-batch metrics weighted by their token counts: the metrics of all batches at once."""
    def mean(field: str, row: int) -> np.ndarray:
        num = sum(np.asarray(getattr(m, field), np.float64) * w[row] for m, w in parts)
        den = sum(w[row] for _, w in parts)
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)

    out = {"recall": mean("recall", 0), "precision": mean("precision", 1)}
    for field in ("prediction_sparsity", "true_sparsity", "predicted_active_per_token"):
        out[field] = mean(field, 2)
    return {k: v.round(6).tolist() for k, v in out.items()}


def quality(graphdef, params, batches: Sequence[Batch], threshold_L, pred_params: pm.Params,
            strats: Sequence[Strategy]) -> list[dict]:
    """Per strategy: recall, precision, prediction and true sparsity per layer (lists of L)
    and their layer means, over the real tokens of `batches` ("token" reduction: per
    token, then averaged, ReLU² §4 (2))."""
    t_L = jnp.asarray(threshold_L, jnp.float32)
    parts: list[list] = [[] for _ in strats]
    for batch in batches:
        x, labels = record_active(graphdef, params, batch, t_L)
        scores = _scores(pred_params, x)
        real_BxT = batch["loss_weights"] > 0
        for j, (strategy, k) in enumerate(strats):
            m = predictor_metrics(scores, labels, real_BxT, strategy=strategy, k=k)
            parts[j].append((jax.device_get(m), np.asarray(_weights(scores, labels, real_BxT, strategy=strategy, k=k))))
    rows = []
    for (strategy, k), p in zip(strats, parts):
        layers = _merge(p)
        rows.append({"strategy": strategy, "k": k, "layers": layers,
                     **{name: float(np.mean(v)) for name, v in layers.items()}})
    return rows


def perplexities(run, params, batches: Sequence[Batch], threshold_L, pred_params: pm.Params,
                 strats: Sequence[Strategy]) -> dict:
    """Validation loss / PPL (and the recorded activation ratio) of the dense model, the
    oracle threshold mode (keep ‖n_i‖ ≥ t_l) and the predicted mode per strategy."""
    def one(sp: Sparsify) -> dict:
        m = run.evaluate(params, batches, sp)
        ratio_L = np.asarray(m["activation_ratio"], np.float64)
        return {"loss": float(m["loss"]), "perplexity": float(m["perplexity"]),
                "activation_ratio": float(ratio_L.mean()), "layer_activation_ratio": ratio_L.round(6).tolist()}

    dense = one(Sparsify())
    oracle = one(Sparsify(mode="threshold", threshold=jnp.asarray(threshold_L, jnp.float32)))
    rows = []
    for strategy, k in strats:
        r = one(Sparsify(mode="predicted", predictor=pm.spec(pred_params, strategy, k or 0)))
        rows.append({"strategy": strategy, "k": k, **r, "ppl_ratio": math.exp(r["loss"] - dense["loss"])})
    oracle["ppl_ratio"] = math.exp(oracle["loss"] - dense["loss"])
    return {"dense": dense, "oracle": oracle, "predicted": rows}

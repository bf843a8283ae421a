"""The one forward pass with its loss and records, shared by training, evaluation, the
searches and the predictors; eval steps that return sums ("add them, then summarize").

Losses are token-weighted over real tokens (`loss_weights`). The recorded (L, B, T, F)
mask is reduced inside the pass by ONE per-sequence count reduction
(`metrics.hidden_units.sequence_unit_counts`), so no mask outlives it when only
per-layer metrics are asked for; a training method may pass its own `reduce_mask`
(hidden-unit tracking) that returns the activation ratio with its extra statistics.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsity_jax.metrics.hidden_units import sequence_unit_counts, use_from_counts
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names

Array = jax.Array
Batch = dict[str, Array]
MaskReducer = Callable[[Array, Array], dict[str, Any]]


def activation_ratio_of_mask(mask_LxBxTxF: Array, token_mask_BxT: Array) -> dict[str, Array]:
    """{activation_ratio: (L,)}: mean over real tokens of the used fraction of F."""
    count_LxBxF, length_B = sequence_unit_counts(mask_LxBxTxF, token_mask_BxT)
    return {names.ACTIVATION_RATIO: use_from_counts(count_LxBxF, length_B)["per_token"]}


def forward(graphdef, params, batch: Batch, sparsify: Sparsify = Sparsify(), record: str | None = None,
            layer_keep=None, layer_scale=None, reduce_mask: MaskReducer | None = None):
    """Summed cross-entropy, token weight, correct predictions and, when the mask is
    recorded, the per-layer activation-ratio sum. Returns (sums, records): the records
    (`mask` / `scores`, (L, B, T, F)) and whatever `reduce_mask` added (default:
    `activation_ratio_of_mask`)."""
    model = nnx.merge(graphdef, params)
    logits_BxTxV, records = model.apply(
        batch["inputs"], batch["segment_ids"], batch["positions"], sparsify=sparsify, record=record,
        layer_keep=layer_keep, layer_scale=layer_scale,
    )
    w_BxT = batch["loss_weights"].astype(jnp.float32)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch["targets"])
    out = {
        "loss_sum": jnp.sum(ce_BxT * w_BxT),
        "weight": jnp.sum(w_BxT),
        "correct_sum": jnp.sum((jnp.argmax(logits_BxTxV, -1) == batch["targets"]) * w_BxT),
    }
    if "mask" in records:
        stats = dict((reduce_mask or activation_ratio_of_mask)(records["mask"], w_BxT > 0))
        out["activation_ratio_sum"] = stats.pop(names.ACTIVATION_RATIO) * out["weight"]
        records = dict(records, **stats)
    return out, records


def summarize(sums: dict[str, Array]) -> dict[str, Array]:
    """Token-weighted means from summed step outputs."""
    weight = jnp.maximum(sums["weight"], 1.0)
    out = {names.LOSS: sums["loss_sum"] / weight, names.ACCURACY: sums["correct_sum"] / weight,
           names.TOKENS: sums["weight"]}
    if "activation_ratio_sum" in sums:
        out[names.ACTIVATION_RATIO] = sums["activation_ratio_sum"] / weight
    return out


def make_eval_step(graphdef, record: str | None = "mask") -> Callable:
    """Returns eval_step(params, batch, sparsify) -> summed outputs (add them, then `summarize`)."""

    def eval_step(params, batch: Batch, sparsify: Sparsify = Sparsify()):
        out, _ = forward(graphdef, params, batch, sparsify, record)
        return out

    return eval_step

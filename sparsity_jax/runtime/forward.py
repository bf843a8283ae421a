"""The one forward pass with its loss and records, shared by training, evaluation, the
searches and the predictors; eval steps that return sums ("add them, then summarize").

Losses are token-weighted over real tokens (`loss_weights`). The recorded (L, B, T, F)
mask is reduced inside the pass by ONE per-sequence count reduction
(`metrics.hidden_units.sequence_unit_counts`), so no mask outlives it when only
per-layer metrics are asked for; a training method may pass its own `reduce_mask`
(hidden-unit tracking) that returns the activation ratio with its extra statistics.
Where the float32 logits would outgrow `LOGITS_BYTES` per device, the head and the loss run
over chunks of positions (a pretrained model's 49k–256k vocabulary), one chunk's logits
alive at a time.
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
LOGITS_BYTES = 64 << 20  # per device: float32 logits beyond this are computed in chunks of positions


def head_chunks(shape_BxTxV: tuple[int, int, int], logits_bytes: int | None, devices: int = 1) -> int:
    """How many chunks of positions the head runs in: the fewest n dividing T whose
    (B, T/n, V) float32 logits, spread over `devices`, fit `logits_bytes` (None: 1)."""
    b, t, v = shape_BxTxV
    if logits_bytes is None:
        return 1
    return next((n for n in range(1, t + 1) if t % n == 0 and b * (t // n) * v * 4 <= logits_bytes * devices), t)


def token_sums(model, x_BxTxD: Array, targets_BxT: Array, w_BxT: Array, chunks: int = 1) -> tuple[Array, Array]:
    """Summed cross-entropy and correct next-token predictions of the head (`LM.logits`) on
    the last block's output, weighted by `w_BxT`. With chunks > 1 the positions are cut into
    that many slices that `lax.map` runs one after another, each under `jax.checkpoint`, so
    neither the forward nor a backward holds more than one slice's logits (MaxText's vocab
    tiling does the same for its loss)."""

    def sums(x_BxCxD, y_BxC, w_BxC):
        logits_BxCxV = model.logits(x_BxCxD)
        ce_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, y_BxC)
        return jnp.sum(ce_BxC * w_BxC), jnp.sum((jnp.argmax(logits_BxCxV, -1) == y_BxC) * w_BxC)

    if chunks == 1:
        return sums(x_BxTxD, targets_BxT, w_BxT)
    b, t = targets_BxT.shape

    def split(a):  # (B, T, ...) -> (chunks, B, T / chunks, ...)
        return jnp.moveaxis(a.reshape(b, chunks, t // chunks, *a.shape[2:]), 1, 0)

    loss_n, correct_n = jax.lax.map(jax.checkpoint(lambda xs: sums(*xs)),
                                    (split(x_BxTxD), split(targets_BxT), split(w_BxT)))
    return jnp.sum(loss_n), jnp.sum(correct_n)


def activation_ratio_of_mask(mask_LxBxTxF: Array, token_mask_BxT: Array) -> dict[str, Array]:
    """{activation_ratio: (L,)}: mean over real tokens of the used fraction of F."""
    count_LxBxF, length_B = sequence_unit_counts(mask_LxBxTxF, token_mask_BxT)
    return {names.ACTIVATION_RATIO: use_from_counts(count_LxBxF, length_B)["per_token"]}


def forward(graphdef, params, batch: Batch, sparsify: Sparsify = Sparsify(), record: str | None = None,
            layer_keep=None, layer_scale=None, reduce_mask: MaskReducer | None = None,
            logits_bytes: int | None = LOGITS_BYTES):
    """Summed cross-entropy, token weight, correct predictions and, when the mask is
    recorded, the per-layer activation-ratio sum. Returns (sums, records): the records
    (`mask` / `scores`, (L, B, T, F)) and whatever `reduce_mask` added (default:
    `activation_ratio_of_mask`). `logits_bytes`: the per-device size above which the head
    runs in chunks of positions (`token_sums`); None: in one piece (training, whose backward
    would recompute chunked logits)."""
    model = nnx.merge(graphdef, params)
    fwd = model.forward(batch["inputs"], batch["segment_ids"], batch["positions"], sparsify=sparsify, record=record,
                        layer_keep=layer_keep, layer_scale=layer_scale, head=False)
    records, w_BxT = fwd.records, batch["loss_weights"].astype(jnp.float32)
    chunks = head_chunks((*w_BxT.shape, model.cfg.vocab_size), logits_bytes, jax.device_count())
    loss_sum, correct_sum = token_sums(model, fwd.hidden, batch["targets"], w_BxT, chunks)
    out = {"loss_sum": loss_sum, "weight": jnp.sum(w_BxT), "correct_sum": correct_sum}
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

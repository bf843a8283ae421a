"""Pure train and eval steps over (params, optimizer state) pytrees.

The model is rebuilt from its graphdef inside the traced function (`nnx.merge`), so the
steps are plain functions of arrays: jitted once with explicit shardings, no Python
graph traversal per step. Losses are token-weighted means over real tokens
(`loss_weights`); gradient accumulation sums per-microbatch gradients of the summed loss
and divides once by the total weight, so it equals the full-batch gradient exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsity_jax.metrics.activation import activation_ratio
from sparsity_jax.nn.ffn import Sparsify

Array = jax.Array
Batch = dict[str, Array]
State = dict[str, Any]


def forward(graphdef, params, batch: Batch, sparsify: Sparsify, record: str | None):
    """Summed cross-entropy, token weight and per-layer activation-ratio sums."""
    model = nnx.merge(graphdef, params)
    logits_BxTxV, records = model.apply(
        batch["inputs"], batch["segment_ids"], batch["positions"], sparsify=sparsify, record=record
    )
    w_BxT = batch["loss_weights"].astype(jnp.float32)
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch["targets"])
    out = {
        "loss_sum": jnp.sum(ce_BxT * w_BxT),
        "weight": jnp.sum(w_BxT),
        "correct_sum": jnp.sum((jnp.argmax(logits_BxTxV, -1) == batch["targets"]) * w_BxT),
    }
    if "mask" in records:
        out["act_ratio_sum"] = activation_ratio(records["mask"], w_BxT > 0) * out["weight"]
    return out, records


def _split_micro(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, grad_accum: int = 1, record: str | None = "mask") -> Callable:
    """Returns train_step(state, batch, sparsify) -> (state, metrics)."""

    def micro(params, batch, sparsify):
        def loss_fn(p):
            out, _ = forward(graphdef, p, batch, sparsify, record)
            return out["loss_sum"], out

        return jax.grad(loss_fn, has_aux=True)(params)

    def train_step(state: State, batch: Batch, sparsify: Sparsify = Sparsify()):
        params = state["params"]
        if grad_accum == 1:
            grads, sums = micro(params, batch, sparsify)
        else:
            def body(carry, mb):
                g, s = micro(params, mb, sparsify)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zero = jax.eval_shape(micro, params, jax.tree.map(lambda x: x[0], _split_micro(batch, grad_accum)), sparsify)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (grads, sums), _ = jax.lax.scan(body, zero, _split_micro(batch, grad_accum))
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state, step=state["step"] + 1)
        metrics = summarize(sums)
        metrics["grad_norm"] = optax.global_norm(grads)
        return new_state, metrics

    return train_step


def summarize(sums: dict[str, Array]) -> dict[str, Array]:
    """Token-weighted means from summed step outputs."""
    weight = jnp.maximum(sums["weight"], 1.0)
    out = {"loss": sums["loss_sum"] / weight, "accuracy": sums["correct_sum"] / weight, "tokens": sums["weight"]}
    if "act_ratio_sum" in sums:
        out["act_ratio"] = sums["act_ratio_sum"] / weight
    return out


def make_eval_step(graphdef, record: str | None = "mask") -> Callable:
    """Returns eval_step(params, batch, sparsify) -> summed outputs (add them, then `summarize`)."""

    def eval_step(params, batch: Batch, sparsify: Sparsify = Sparsify()):
        out, _ = forward(graphdef, params, batch, sparsify, record)
        return out

    return eval_step

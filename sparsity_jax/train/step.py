"""The pure train step over (params, optimizer state) pytrees, on the one forward pass
(`runtime.forward`), with a training method's device side (`method`).

The model is rebuilt from its graphdef inside the traced function (`nnx.merge`), so the
steps are plain functions of arrays: jitted once with explicit shardings, no Python
graph traversal per step. Losses are token-weighted means over real tokens
(`loss_weights`); gradient accumulation sums per-microbatch gradients of the summed loss
and divides once by the total weight, so it equals the full-batch gradient exactly.

The method is duck-typed (see `methods.base.StepMethod`; `train` names no method): per
micro-batch `method.options(params, state, sparsify, variant)` gives the forward's
keyword arguments (MoE mode, dropped layers, the unit mask, what to record and how to
reduce the mask); what its mask reduction returns (its records) is combined over
micro-batches by `method.merge_records`; after the gradient `method.update` gives the new
values of its state entries and its step metrics.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
import optax

from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names
from sparsity_jax.runtime.forward import forward, summarize

Array = jax.Array
Batch = dict[str, Array]
State = dict[str, Any]
MODEL_RECORDS = ("mask", "scores", "inputs")  # what the model sows: reduced inside the pass, never returned


def _split_micro(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, method, grad_accum: int = 1) -> Callable:
    """Returns train_step(state, batch, sparsify=Sparsify(), variant=None) -> (state, metrics).

    `sparsify`: the caller's FFN settings, which the method's options start from;
    `variant` (static, hashable): the method's compiled variant of the step (None: its
    `base_variant`). A "detailed" dict in the metrics is the step's split "units" record.
    """

    def micro(params, batch, state, sparsify, variant):
        def loss_fn(p):
            out, records = forward(graphdef, p, batch, *method.options(p, state, sparsify, variant), logits_bytes=None)
            return out["loss_sum"], (out, {k: v for k, v in records.items() if k not in MODEL_RECORDS})

        grads, (sums, records) = jax.grad(loss_fn, has_aux=True)(params)
        return grads, sums, records

    def train_step(state: State, batch: Batch, sparsify: Sparsify = Sparsify(), variant: Hashable = None):
        variant = method.base_variant if variant is None else variant
        params = state["params"]
        if grad_accum == 1:
            grads, sums, records = micro(params, batch, state, sparsify, variant)
        else:
            micro_batches = _split_micro(batch, grad_accum)

            def body(carry, mb):
                g, s, r = micro(params, mb, state, sparsify, variant)
                acc_g, acc_s = jax.tree.map(jnp.add, carry[:2], (g, s))
                return (acc_g, acc_s, method.merge_records(carry[2], r)), None

            first = jax.tree.map(lambda x: x[0], micro_batches)
            zero = jax.eval_shape(lambda p, b, st, sp: micro(p, b, st, sp, variant), params, first, state, sparsify)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (grads, sums, records), _ = jax.lax.scan(body, zero, micro_batches)
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state,
                         step=state["step"] + 1)
        metrics = summarize(sums)
        metrics[names.GRAD_NORM] = optax.tree.norm(grads)
        entries, method_metrics = method.update(state, records, variant)
        new_state.update(entries)
        metrics.update(method_metrics)
        return new_state, metrics

    return train_step

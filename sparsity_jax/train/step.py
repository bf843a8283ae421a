"""The pure train step over (params, optimizer state) pytrees, on the one forward pass
(`runtime.forward`).

The model is rebuilt from its graphdef inside the traced function (`nnx.merge`), so the
steps are plain functions of arrays: jitted once with explicit shardings, no Python
graph traversal per step. Losses are token-weighted means over real tokens
(`loss_weights`); gradient accumulation sums per-microbatch gradients of the summed loss
and divides once by the total weight, so it equals the full-batch gradient exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsity_jax.methods.pld import PLDSchedule
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.ssd.convert import centres_from_params
from sparsity_jax.runtime import names
from sparsity_jax.runtime.forward import forward, summarize
from sparsity_jax.train.units import UnitConfig, mask_stats, sparsify_for, update_units

Array = jax.Array
Batch = dict[str, Array]
State = dict[str, Any]


def _split_micro(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, grad_accum: int = 1,
                    record: str | None = "mask", units: UnitConfig | None = None,
                    moe: MoESpec | None = None, pld: PLDSchedule | None = None) -> Callable:
    """Returns train_step(state, batch, sparsify, detailed=False, top_k=0) -> (state, metrics).

    With `units` (needs record ∈ {mask, both}) the state carries `units` (turn-on/off
    tracking, dead-unit mask; see `train.units`); `detailed=True` (static) adds the
    per-layer hidden-unit use and percentiles as metrics["detailed"]. `top_k=K > 0` (static; SSD's
    sparse phase, SMoE, MoE-Dropout) runs every FFN in MoE mode with the options of `moe`,
    K of its N experts, and router centres recomputed from the current W_in (gradients
    flow through them, SSD §4.1); it records nothing and leaves the unit state unchanged.
    With `pld` (progressive layer dropping) each step drops blocks with the schedule's
    keep probabilities p_i at the state's step, drawn from the state's rng folded with the
    step (the same on resume), and scales a kept block's update by 1/p_i (so evaluation,
    every block unscaled, matches training in expectation); it records nothing and logs
    `layers_kept`.
    """

    def micro(params, batch, sparsify, detailed, top_k, pld_keep):
        keep_L, scale_L = pld_keep if pld_keep is not None else (None, None)

        def loss_fn(p):
            if top_k or keep_L is not None:
                sp = sparsify
                if top_k:
                    sp = dataclasses.replace(sparsify, mode="moe", moe=moe.replace(
                        top_k=top_k, centres=centres_from_params(p, moe.num_experts)))
                out, _ = forward(graphdef, p, batch, sp, None, keep_L, layer_scale=scale_L)
                return out["loss_sum"], (out, {})
            out, aux = forward(graphdef, p, batch, sparsify, record,
                               reduce_mask=lambda m, tm: mask_stats(m, tm, units, detailed))
            return out["loss_sum"], (out, {k: aux[k] for k in ("used", "detailed") if k in aux})

        grads, (sums, extra) = jax.grad(loss_fn, has_aux=True)(params)
        return grads, sums, extra

    def train_step(state: State, batch: Batch, sparsify: Sparsify = Sparsify(), detailed: bool = False,
                   top_k: int = 0):
        params = state["params"]
        sparsify = sparsify_for(state.get("units"), units, sparsify)
        keep_L = pld_keep = None
        if pld is not None:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0x91D), state["step"])
            p_L = pld.keep_probs(state["step"], jnp)
            keep_L = jax.random.uniform(key, (pld.num_layers,)) < p_L
            pld_keep = (keep_L, jnp.where(p_L > 0, 1.0 / jnp.maximum(p_L, 1e-6), 0.0))  # p = 0: never kept
        if grad_accum == 1:
            grads, sums, extra = micro(params, batch, sparsify, detailed, top_k, pld_keep)
        else:
            micro_batches = _split_micro(batch, grad_accum)

            def body(carry, mb):
                g, s, e = micro(params, mb, sparsify, detailed, top_k, pld_keep)
                acc_g, acc_s, acc_e = jax.tree.map(jnp.add, carry[:2], (g, s)) + (e,)
                if "used" in e:
                    acc_e = dict(e, used=carry[2]["used"] | e["used"])
                return (acc_g, acc_s, acc_e), None

            first = jax.tree.map(lambda x: x[0], micro_batches)
            zero = jax.eval_shape(lambda p, b, sp, k: micro(p, b, sp, detailed, top_k, k), params, first, sparsify,
                                  pld_keep)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            (grads, sums, extra), _ = jax.lax.scan(body, zero, micro_batches)
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        step = state["step"] + 1
        new_state = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state, step=step)
        metrics = summarize(sums)
        metrics[names.GRAD_NORM] = optax.tree.norm(grads)
        if keep_L is not None:
            metrics[names.LAYERS_KEPT] = jnp.sum(keep_L).astype(jnp.float32)
        if units is not None and not top_k:
            new_state["units"], unit_stats = update_units(state["units"], extra["used"], step, state["rng"], units)
            metrics.update(unit_stats)
            if "detailed" in extra:  # the "units" record: use, percentiles and the tracking stats
                metrics["detailed"] = {**extra["detailed"], **unit_stats}
        return new_state, metrics

    return train_step

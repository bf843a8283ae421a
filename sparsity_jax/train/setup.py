"""Builds what training needs on top of the model run (`runtime.model`): the optimizer,
the train state with its shardings and the jitted train step.

`build(settings, vocab_size)` returns a `TrainRun`; evaluation never builds one (it opens
a `runtime.trained.Trained`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsity_jax.methods.pld import PLDSchedule
from sparsity_jax.nn.model import LM
from sparsity_jax.nn.sparsify import MoESpec
from sparsity_jax.runtime import sharding as shd
from sparsity_jax.runtime.checkpoint import abstract_with_shardings
from sparsity_jax.runtime.model import ModelRun, model_parts
from sparsity_jax.runtime.trained import vocab_size
from sparsity_jax.settings import Settings
from sparsity_jax.ssd.convert import initial_labels
from sparsity_jax.train.optimizer import make_optimizer
from sparsity_jax.train.step import make_train_step
from sparsity_jax.train.units import UnitConfig, init_units


def moe_spec(settings: Settings) -> MoESpec | None:
    """Static MoE options of the MoE steps of ssd / smoe / moe_dropout (centres are filled
    in per step, K per compiled step)."""
    s = settings.ssd
    if not s.moe:
        return None
    return MoESpec(centres=jnp.zeros((0,)), num_experts=s.num_experts, top_k=s.top_k, dispatch=s.dispatch,
                   capacity_factor=s.capacity_factor, router_grad=s.router_grad)


@dataclasses.dataclass
class TrainRun(ModelRun):
    """A model run with its optimizer, train state (shapes, shardings, init) and train step."""

    tx: optax.GradientTransformation = None
    state_shardings: Any = None
    abstract_state: Any = None
    init_state: Callable[[jax.Array], Any] = None
    train_step: Callable = None  # (state, batch, sparsify, detailed: bool, top_k: int) -> (state, metrics)
    units: UnitConfig | None = None


def build(settings: Settings, vocab_size: int, *, devices=None) -> TrainRun:
    """The train run of `settings` with the data vocabulary's size (for model.vocab_size = 0)."""
    parts = model_parts(settings, vocab_size, devices=devices)
    mcfg, mesh, graphdef, param_sh = parts["model_cfg"], parts["mesh"], parts["graphdef"], parts["param_shardings"]
    tx = make_optimizer(settings.optimizer, settings.train.steps)
    repl = shd.replicated(mesh)
    ucfg = UnitConfig.of(settings, mesh)
    ssd = settings.ssd.method == "ssd"

    def init_state(key: jax.Array):
        params = nnx.to_pure_dict(nnx.state(LM(mcfg, rngs=nnx.Rngs(params=key)), nnx.Param))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
        if ucfg is not None:
            state["units"] = init_units(ucfg)
        if ssd:
            state["ssd_labels"] = initial_labels(mcfg.num_layers, mcfg.d_ff, settings.ssd.num_experts)
        return state

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract["opt_state"], param_sh, transform_non_params=lambda _: repl
    )
    state_sh = {"step": repl, "params": param_sh, "opt_state": opt_sh, "rng": repl}
    if ucfg is not None:
        state_sh["units"] = jax.tree.map(lambda _: repl, abstract["units"])
    if ssd:
        state_sh["ssd_labels"] = repl
    bsh = parts["batch_sharding"]
    record = None if settings.train.record == "none" else settings.train.record
    train_step = jax.jit(
        make_train_step(graphdef, tx, settings.train.grad_accum, record=record, units=ucfg, moe=moe_spec(settings),
                        pld=PLDSchedule.of(settings)),
        in_shardings=(state_sh, bsh, repl), out_shardings=(state_sh, repl), donate_argnums=0,
        static_argnums=(3, 4),
    )
    return TrainRun(
        **parts, tx=tx, state_shardings=state_sh, abstract_state=abstract_with_shardings(abstract, state_sh),
        init_state=jax.jit(init_state, out_shardings=state_sh), train_step=train_step, units=ucfg,
    )


def build_run(settings: Settings, workdir) -> TrainRun:
    """The train run of `settings`, its vocabulary from the data (see `runtime.trained.vocab_size`)."""
    return build(settings, vocab_size(settings, workdir))

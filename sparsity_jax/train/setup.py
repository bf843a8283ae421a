"""Builds everything a run needs from its settings: mesh, model graph, shardings, jitted steps.

`build(settings, vocab_size)` returns a `Run`; the trainer, the evaluation commands and
the searches use it, so one place decides shapes, shardings and compiled functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.methods.pld import PLDSchedule
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.settings import Settings
from sparsity_jax.ssd.convert import initial_labels
from sparsity_jax.train import names
from sparsity_jax.train import sharding as shd
from sparsity_jax.train.checkpoint import abstract_with_shardings
from sparsity_jax.train.optimizer import make_optimizer
from sparsity_jax.train.step import make_eval_step, make_train_step, summarize
from sparsity_jax.train.units import UnitConfig, init_units, sparsify_for

# Peak dense bf16 FLOP/s per chip, for the MFU estimate (None: unknown device).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "NVIDIA L4": 121e12,
}


def peak_flops_per_device(device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return flops
    return None


def moe_spec(settings: Settings) -> MoESpec | None:
    """Static MoE options of the MoE steps of ssd / smoe / moe_dropout (centres are filled
    in per step, K per compiled step)."""
    s = settings.ssd
    if not s.moe:
        return None
    return MoESpec(centres=jnp.zeros((0,)), num_experts=s.num_experts, top_k=s.top_k, dispatch=s.dispatch,
                   capacity_factor=s.capacity_factor, router_grad=s.router_grad)


@dataclasses.dataclass
class Run:
    """A built run: everything with a shape or a sharding, plus the compiled steps."""

    settings: Settings
    model_cfg: ModelConfig
    mesh: jax.sharding.Mesh
    graphdef: Any
    tx: optax.GradientTransformation
    state_shardings: Any
    abstract_state: Any
    batch_sharding: jax.sharding.NamedSharding
    init_state: Callable[[jax.Array], Any]
    train_step: Callable  # (state, batch, sparsify, detailed: bool, top_k: int) -> (state, metrics)
    eval_step: Callable
    units: UnitConfig | None = None

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes, dtypes and shardings of one global batch (nothing allocated)."""
        shape = (self.settings.train.global_batch_size, self.settings.train.seq_len)
        spec = lambda dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)  # noqa: E731
        return {k: spec(jnp.float32 if k == "loss_weights" else jnp.int32)
                for k in ("inputs", "targets", "segment_ids", "positions", "loss_weights")}

    def device_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Process-local numpy rows → global arrays sharded over (data, fsdp)."""
        out = {}
        for k, v in local.items():
            global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, v, global_shape)
        return out

    def sparsify(self, state) -> Sparsify:
        """The run's own FFN settings for `state` (e.g. its dead-unit mask)."""
        return sparsify_for(state.get("units"), self.units, Sparsify())

    def evaluate(self, params, batches: list[dict[str, jax.Array]], sparsify: Sparsify = Sparsify()) -> dict:
        """Token-weighted validation loss / perplexity / per-layer activation ratio."""
        total = None
        for batch in batches:
            out = self.eval_step(params, batch, sparsify)
            total = out if total is None else jax.tree.map(jnp.add, total, out)
        metrics = jax.device_get(summarize(total))
        metrics[names.PERPLEXITY] = float(np.exp(metrics[names.LOSS]))
        return metrics


def build(settings: Settings, vocab_size: int, *, devices=None) -> Run:
    """The run of `settings` with the data vocabulary's size (for model.vocab_size = 0)."""
    mcfg = settings.model_config(vocab_size)
    m = settings.mesh
    try:
        mesh = shd.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
    except ValueError as e:
        raise UserError(f"{e}.") from None
    data_par = mesh.shape["data"] * mesh.shape["fsdp"]
    if settings.micro_batch % data_par:
        raise UserError(f"the micro-batch of {settings.micro_batch} rows must be divisible by mesh data×fsdp="
                        f"{data_par}; change train.global_batch_size or the mesh.")
    abstract_model = nnx.eval_shape(lambda: LM(mcfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_sh = shd.param_shardings(abstract_params, mesh)
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
    bsh = shd.batch_sharding(mesh)
    record = None if settings.train.record == "none" else settings.train.record
    train_step = jax.jit(
        make_train_step(graphdef, tx, settings.train.grad_accum, record=record, units=ucfg, moe=moe_spec(settings),
                        pld=PLDSchedule.of(settings)),
        in_shardings=(state_sh, bsh, repl), out_shardings=(state_sh, repl), donate_argnums=0,
        static_argnums=(3, 4),
    )
    eval_step = jax.jit(make_eval_step(graphdef, record="mask"), in_shardings=(param_sh, bsh, repl), out_shardings=repl)
    return Run(
        settings=settings, model_cfg=mcfg, mesh=mesh, graphdef=graphdef, tx=tx, state_shardings=state_sh,
        abstract_state=abstract_with_shardings(abstract, state_sh), batch_sharding=bsh,
        init_state=jax.jit(init_state, out_shardings=state_sh), train_step=train_step, eval_step=eval_step,
        units=ucfg,
    )

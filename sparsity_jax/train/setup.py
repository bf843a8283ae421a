"""Builds everything a run needs from a config: mesh, model graph, shardings, jitted steps.

`build(cfg, vocab_size)` returns a `Run`; the trainer, `evaluate` and the searches use
it, so there is one place that decides shapes, shardings and compiled functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.nn.ffn import Sparsify
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.moe import MoESpec
from sparsity_jax.ssd.baselines import MOE_METHODS, check_method, pld_schedule, router_grad
from sparsity_jax.ssd.controller import initial_labels
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


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """ModelConfig from `cfg.model` (vocab_size 0 = the data vocabulary's size)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in cfg.model.to_dict().items() if k in fields}
    kwargs["vocab_size"] = kwargs.get("vocab_size") or vocab_size
    try:
        return ModelConfig(**kwargs).validate()
    except ValueError as e:
        raise UserError(str(e)) from None


def validate_train_config(cfg: ml_collections.ConfigDict) -> None:
    t = cfg.train
    for name in ("steps", "global_batch_size", "seq_len", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
        if t[name] <= 0:
            raise UserError(f"train.{name} must be positive, got {t[name]}")
    if t.global_batch_size % t.grad_accum:
        raise UserError(f"train.grad_accum={t.grad_accum} must divide train.global_batch_size={t.global_batch_size}")
    if t.record not in ("none", "mask", "scores", "both"):
        raise UserError(f"train.record={t.record!r} is not one of none, mask, scores, both")
    if t.metrics_every < 0 or cfg.unit_mask.at_step < 0 or cfg.unit_mask.window <= 0:
        raise UserError("train.metrics_every and unit_mask.at_step must be >= 0 and unit_mask.window > 0")
    if (t.metrics_every or cfg.unit_mask.at_step) and t.record not in ("mask", "both"):
        raise UserError("hidden-unit metrics and unit masking need train.record=mask (or both)")
    if cfg.unit_mask.at_step > t.steps:
        raise UserError(f"unit_mask.at_step={cfg.unit_mask.at_step} is beyond train.steps={t.steps}")


def moe_spec(cfg: ml_collections.ConfigDict, mcfg: ModelConfig) -> MoESpec | None:
    """Static MoE options of the MoE steps of ssd / smoe / moe_dropout (centres are
    filled in per step, K per compiled step)."""
    s = cfg.ssd
    if check_method(cfg, mcfg) not in MOE_METHODS:
        return None
    return MoESpec(centres=jnp.zeros((0,)), num_experts=s.num_experts, top_k=s.top_k, dispatch=s.dispatch,
                   capacity_factor=s.capacity_factor, router_grad=router_grad(cfg))


def unit_config(cfg: ml_collections.ConfigDict, mcfg: ModelConfig, mesh) -> "UnitConfig | None":
    """Hidden-unit tracking settings, or None when the run records no masks."""
    if cfg.train.record not in ("mask", "both"):
        return None
    groups = cfg.train.metrics_batch_groups
    if groups == -1:
        groups = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.global_batch_size // cfg.train.grad_accum
    if groups <= 0 or micro % groups:
        raise UserError(f"train.metrics_batch_groups={groups} must divide the micro-batch of {micro} rows (or be -1)")
    return UnitConfig(
        num_layers=mcfg.num_layers, d_ff=mcfg.d_ff, record_threshold=float(cfg.train.record_threshold),
        batch_groups=groups, mask_at_step=cfg.unit_mask.at_step, mask_window=cfg.unit_mask.window,
        mask_random=cfg.unit_mask.random,
    )


@dataclasses.dataclass
class Run:
    """A built run: everything with a shape or a sharding, plus the compiled steps."""

    cfg: ml_collections.ConfigDict
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
        metrics["perplexity"] = float(np.exp(metrics["loss"]))
        return metrics


def build(cfg: ml_collections.ConfigDict, vocab_size: int, *, devices=None) -> Run:
    validate_train_config(cfg)
    mcfg = model_config(cfg, vocab_size)
    try:
        mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    except ValueError as e:
        raise UserError(str(e)) from None
    data_par = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.global_batch_size // cfg.train.grad_accum
    if micro % data_par:
        raise UserError(
            f"the micro-batch of {micro} rows must be divisible by mesh data×fsdp={data_par}; change train.global_batch_size"
        )
    abstract_model = nnx.eval_shape(lambda: LM(mcfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_sh = shd.param_shardings(abstract_params, mesh)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    repl = shd.replicated(mesh)

    ucfg = unit_config(cfg, mcfg, mesh)
    method = check_method(cfg, mcfg)

    def init_state(key: jax.Array):
        params = nnx.to_pure_dict(nnx.state(LM(mcfg, rngs=nnx.Rngs(params=key)), nnx.Param))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
        if ucfg is not None:
            state["units"] = init_units(ucfg)
        if method == "ssd":
            state["ssd_labels"] = initial_labels(mcfg.num_layers, mcfg.d_ff, cfg.ssd.num_experts)
        return state

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract["opt_state"], param_sh, transform_non_params=lambda _: repl
    )
    state_sh = {"step": repl, "params": param_sh, "opt_state": opt_sh, "rng": repl}
    if ucfg is not None:
        state_sh["units"] = jax.tree.map(lambda _: repl, abstract["units"])
    if method == "ssd":
        state_sh["ssd_labels"] = repl
    bsh = shd.batch_sharding(mesh)
    record = None if cfg.train.record == "none" else cfg.train.record
    train_step = jax.jit(
        make_train_step(graphdef, tx, cfg.train.grad_accum, record=record, units=ucfg, moe=moe_spec(cfg, mcfg),
                        pld=pld_schedule(cfg, mcfg) if method == "pld" else None),
        in_shardings=(state_sh, bsh, repl), out_shardings=(state_sh, repl), donate_argnums=0,
        static_argnums=(3, 4),
    )
    eval_step = jax.jit(make_eval_step(graphdef, record="mask"), in_shardings=(param_sh, bsh, repl), out_shardings=repl)
    return Run(
        cfg=cfg, model_cfg=mcfg, mesh=mesh, graphdef=graphdef, tx=tx, state_shardings=state_sh,
        abstract_state=abstract_with_shardings(abstract, state_sh), batch_sharding=bsh,
        init_state=jax.jit(init_state, out_shardings=state_sh), train_step=train_step, eval_step=eval_step,
        units=ucfg,
    )

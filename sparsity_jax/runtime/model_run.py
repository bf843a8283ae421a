"""A model placed on a mesh: what evaluating, searching, predicting and decoding need of a
run (settings, model config, mesh, graph, parameter and batch shardings, the jitted eval
step), and nothing of training. `train.setup` extends it with the optimizer, the train
state and the train step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names
from sparsity_jax.devices import sharding as shd
from sparsity_jax.runtime.forward import make_eval_step, summarize
from sparsity_jax.settings import Settings

NOT_EVALUATED = ("opt_state", "step", "rng")  # train-state entries evaluation never restores

def own_sparsify(settings: Settings, state: dict | None = None, base: Sparsify = Sparsify()) -> Sparsify:
    """`base` with what a run's model carries of its own when it tracks hidden units: its
    record threshold and, once dead-unit masking fixed it, the unit mask in
    `state["units"]["unit_mask"]` (W&A §4.1)."""
    if settings.train.record not in ("mask", "both"):  # nothing tracked, nothing masked
        return base
    rt = settings.train.record_threshold
    mask = ((state or {}).get("units") or {}).get("unit_mask")
    if mask is not None and base.unit_mask is not None:
        mask = mask * base.unit_mask
    if mask is None and not rt > 0:
        return base
    return dataclasses.replace(base, unit_mask=base.unit_mask if mask is None else mask,
                               record_threshold=rt if rt > 0 else base.record_threshold)


@dataclasses.dataclass
class ModelRun:
    """A run's model on its mesh: shapes, shardings and the jitted eval step."""

    settings: Settings
    model_cfg: ModelConfig
    mesh: jax.sharding.Mesh
    graphdef: Any
    param_shardings: Any
    abstract_params: Any  # ShapeDtypeStructs with shardings
    batch_sharding: jax.sharding.NamedSharding
    eval_step: Callable  # (params, batch, sparsify) -> summed outputs

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
        """The run's own FFN settings for a (restored) state, see `own_sparsify`."""
        return own_sparsify(self.settings, state)

    def eval_items(self, saved: dict) -> dict[str, Any]:
        """Abstract subtrees of a saved train state (`Checkpointer.saved_tree`) that
        evaluation restores: the parameters on their shardings and every entry a training
        method added (e.g. the dead-unit mask, SSD's expert labels) replicated; never the
        optimizer state, the step or the RNG."""
        repl = shd.replicated(self.mesh)
        items = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=repl), v)
                 for k, v in saved.items() if k not in NOT_EVALUATED}
        items["params"] = self.abstract_params  # on the mesh's parameter shardings
        return items

    def evaluate(self, params, batches: list[dict[str, jax.Array]], sparsify: Sparsify = Sparsify()) -> dict:
        """Token-weighted validation loss / perplexity / per-layer activation ratio."""
        total = None
        for batch in batches:
            out = self.eval_step(params, batch, sparsify)
            total = out if total is None else jax.tree.map(jnp.add, total, out)
        metrics = jax.device_get(summarize(total))
        metrics[names.PERPLEXITY] = float(np.exp(metrics[names.LOSS]))
        return metrics


def model_parts(settings: Settings, vocab_size: int, *, devices=None) -> dict[str, Any]:
    """The fields of a `ModelRun` for `settings` with the data vocabulary's size (for
    model.vocab_size = 0); UserError for a mesh that does not fit the devices or batch."""
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
    abstract = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                            nnx.to_pure_dict(abstract_params), param_sh)
    bsh = shd.batch_sharding(mesh)
    eval_step = jax.jit(shd.with_activation_sharding(make_eval_step(graphdef, record="mask"), mesh), in_shardings=(param_sh, bsh, shd.replicated(mesh)),
                        out_shardings=shd.replicated(mesh))
    return dict(settings=settings, model_cfg=mcfg, mesh=mesh, graphdef=graphdef, param_shardings=param_sh,
                abstract_params=abstract, batch_sharding=bsh, eval_step=eval_step)


def build_model(settings: Settings, vocab_size: int, *, devices=None) -> ModelRun:
    """The `ModelRun` of `settings` (see `model_parts`)."""
    return ModelRun(**model_parts(settings, vocab_size, devices=devices))

"""Builds what training needs on top of the model run (`runtime.model_run`): the optimizer,
the train state with its shardings (the method's entries included) and the jitted train
step.

`build(settings, vocab_size, method)` returns a `TrainRun`; evaluation never builds one (it opens
a `runtime.trained.Trained`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparsity_jax.nn.model import LM
from sparsity_jax.devices import sharding as shd
from sparsity_jax.runtime.checkpoint import abstract_with_shardings
from sparsity_jax.runtime.block_stacking import convert_blocks
from sparsity_jax.runtime.model_run import ModelRun, model_parts
from sparsity_jax.runtime.trained import vocab_size
from sparsity_jax.settings import Settings
from sparsity_jax.train.optimizer import make_optimizer
from sparsity_jax.train.step import make_train_step

# (settings, mesh) -> the device side of a training method (`methods.base.StepMethod`),
# e.g. `methods.make_method`: the command picks it, `train` never names a method.
MethodFactory = Callable[[Settings, jax.sharding.Mesh], Any]


@dataclasses.dataclass
class TrainRun(ModelRun):
    """A model run with its optimizer, train state (shapes, shardings, init), the device
    side of its training method and the train step."""

    tx: optax.GradientTransformation = None
    state_shardings: Any = None
    abstract_state: Any = None
    init_state: Callable[[jax.Array], Any] = None
    train_step: Callable = None  # (state, batch, sparsify, variant) -> (state, metrics); variant static
    method: Any = None  # the device side (`methods.base.StepMethod`); `method.host(run, meta)` the host side

    def lowered_for_counting(self, sparsify, variant):
        """The train step lowered (not compiled) on abstract inputs for XLA's cost analysis of
        the model's FLOPs: over per-layer blocks without remat, since the analysis counts a
        loop's body once (scanned blocks) and would count rematerialised blocks twice (the
        grad-accumulation scan still counts once; callers multiply by train.grad_accum).
        Lowered unsharded for the CPU backend: the count is the whole step's, and a lowered
        module's cost analysis exists there (a TPU backend gives it only once compiled)."""
        unrolled = dataclasses.replace(self.model_cfg, scan_layers=False, remat="none")
        graphdef = nnx.split(nnx.eval_shape(lambda: LM(unrolled, rngs=nnx.Rngs(0))), nnx.Param)[0]
        step = make_train_step(graphdef, self.tx, self.method, self.settings.train.grad_accum)
        on_cpu = _counting_sharding()
        plain = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_cpu), tree)  # noqa: E731
        state = convert_blocks(plain(self.abstract_state), False)  # a no-op for per-layer blocks
        return jax.jit(step, static_argnums=(3,)).lower(state, plain(self.abstract_batch()), sparsify, variant)

    def model_flops(self, sparsify, variant) -> float | None:
        """Model FLOPs of one step over all devices (`lowered_for_counting`'s cost analysis,
        × train.grad_accum for the micro-batch loop counted once); None where the backend
        gives no cost analysis."""
        try:
            cost = cost_of(self.lowered_for_counting(sparsify, variant))
        except Exception:  # noqa: BLE001 - cost analysis is best effort on some backends
            return None
        return float(cost.get("flops", 0.0)) * self.settings.train.grad_accum or None


def cost_of(stage) -> dict:
    """XLA's cost analysis of a lowered or compiled step as one dict ({} where none)."""
    cost = stage.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def _counting_sharding() -> jax.sharding.Sharding | None:
    """One CPU device, where FLOPs are counted (None: no CPU backend; the default one counts)."""
    try:
        return jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:
        return None


def build(settings: Settings, vocab_size: int, method: MethodFactory, *, devices=None) -> TrainRun:
    """The train run of `settings` with the data vocabulary's size (for model.vocab_size = 0)
    and the training method `method(settings, mesh)`."""
    parts = model_parts(settings, vocab_size, devices=devices)
    mcfg, mesh, graphdef, param_sh = parts["model_cfg"], parts["mesh"], parts["graphdef"], parts["param_shardings"]
    tx = make_optimizer(settings.optimizer, settings.train.steps)
    repl = shd.replicated(mesh)
    device = method(settings, mesh)

    def init_state(key: jax.Array):
        params = nnx.to_pure_dict(nnx.state(LM(mcfg, rngs=nnx.Rngs(params=key)), nnx.Param))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.key_data(jax.random.fold_in(key, 1))}
        return dict(state, **device.init_state(key))

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract["opt_state"], param_sh, transform_non_params=lambda _: repl
    )
    state_sh = {"step": repl, "params": param_sh, "opt_state": opt_sh, "rng": repl}
    state_sh.update(device.state_shardings({k: v for k, v in abstract.items() if k not in state_sh}, mesh))
    train_step = jax.jit(
        shd.with_activation_sharding(make_train_step(graphdef, tx, device, settings.train.grad_accum), mesh),
        in_shardings=(state_sh, parts["batch_sharding"], repl), out_shardings=(state_sh, repl), donate_argnums=0,
        static_argnums=(3,),
    )
    return TrainRun(
        **parts, tx=tx, state_shardings=state_sh, abstract_state=abstract_with_shardings(abstract, state_sh),
        init_state=jax.jit(init_state, out_shardings=state_sh), train_step=train_step, method=device,
    )


def build_run(settings: Settings, workdir, method: MethodFactory) -> TrainRun:
    """The train run of `settings`, its vocabulary from the data (see `runtime.trained.vocab_size`)."""
    return build(settings, vocab_size(settings, workdir), method)

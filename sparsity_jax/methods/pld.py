"""Progressive layer dropping (Zhang & He 2020), SSD's layer-dropping baseline (SSD §5, App. A).

Block i = 1..L of L is kept with p_i(t) = 1 − i/L · (1 − θ(t)), θ(t) = (1 − θ̄)·exp(−γt) + θ̄;
a dropped block is the identity and a kept block's residual update is scaled by 1/p_i
(as DeepSpeed's PLD), so evaluation, every block unscaled, matches training in
expectation. App. A's "overall dropout rate from 0 to 0.25" is read as the final mean
over layers of 1 − p_i: (1 − θ̄)(L + 1)/(2L) = `method.pld_drop_rate`. Expected FLOPs: the
dense step's minus the dropped blocks' share (`accounting.block_share`).

In the step (`PLDStep`) the blocks are dropped with the keep probabilities p_i at the
state's step, drawn from the state's rng folded with the step (the same on resume); a
kept block's update is scaled by 1/p_i; the step records nothing and logs `layers_kept`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.methods.accounting import Accounting, StepFlops, block_share
from sparsity_jax.methods.base import State, StepOptions, Variant, logged, saved_state
from sparsity_jax.methods.dense import DenseStep
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names


@dataclasses.dataclass(frozen=True)
class PLDSchedule:
    """Keep probabilities of progressive layer dropping (Zhang & He 2020, Eq. 5 / §4)."""

    num_layers: int
    drop_rate: float = 0.25  # final mean share of dropped blocks
    gamma: float = 0.001     # decay rate of θ(t) per step

    @property
    def theta_bar(self) -> float:
        return 1.0 - 2.0 * self.num_layers * self.drop_rate / (self.num_layers + 1)

    def keep_probs(self, step, xp=np):
        """(L,) keep probability of blocks 1..L after `step` steps (xp: numpy or jax.numpy)."""
        theta = (1.0 - self.theta_bar) * xp.exp(-self.gamma * xp.asarray(step, xp.float32)) + self.theta_bar
        depth = xp.arange(1, self.num_layers + 1, dtype=xp.float32) / self.num_layers
        return 1.0 - depth * (1.0 - theta)

    @classmethod
    def of(cls, settings) -> "PLDSchedule | None":
        """The schedule of a run's `Settings` (None unless method.name = pld)."""
        s = settings.method
        return cls(settings.model.num_layers, s.pld_drop_rate, s.pld_gamma) if s.name == "pld" else None

    def draw(self, state: State) -> tuple[jax.Array, jax.Array]:
        """(keep (L,) bool, scale (L,)) of the step after `state`: blocks kept with p_i at
        its step, from its rng folded with the step; a kept block scaled by 1/p_i."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0x91D), state["step"])
        p_L = self.keep_probs(state["step"], jnp)
        keep_L = jax.random.uniform(key, (self.num_layers,)) < p_L
        return keep_L, jnp.where(p_L > 0, 1.0 / jnp.maximum(p_L, 1e-6), 0.0)  # p = 0: never kept


@dataclasses.dataclass(frozen=True)
class PLDStep(DenseStep):
    """The device side of PLD: layer_keep / layer_scale of the schedule's draw."""

    schedule: PLDSchedule | None = None

    @classmethod
    def of(cls, settings, mesh, **fields) -> "PLDStep":
        return super().of(settings, mesh, schedule=PLDSchedule.of(settings), **fields)

    def options(self, params, state: State, sparsify: Sparsify, variant: Variant) -> StepOptions:
        keep_L, scale_L = self.schedule.draw(state)
        return StepOptions(sparsify, None, keep_L, scale_L)

    def update(self, state: State, records: dict, variant: Variant) -> tuple[State, dict]:
        keep_L, _ = self.schedule.draw(state)  # the options' draw: same key, same step
        return {}, {names.LAYERS_KEPT: jnp.sum(keep_L).astype(jnp.float32)}

    def host(self, run, meta: dict | None = None) -> "PLD":
        return PLD(run, saved_state(meta))


class PLD:
    """The PLD method: expected FLOPs per step from the keep probabilities."""

    name = "pld"

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run = run
        self.schedule = PLDSchedule.of(run.settings)
        self.share = block_share(run.model_cfg, run.settings.train.seq_len)
        self.flops = flops or StepFlops(run)
        self.account = Accounting((saved or {}).get("cum"))

    def variant(self, step: int) -> Variant:
        return Variant()

    def dropped(self, step: int) -> float:
        """Expected number of blocks dropped in the step after `step` completed steps."""
        return float(np.sum(1.0 - self.schedule.keep_probs(step)))

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        dense = self.flops(0)
        return (None if dense is None else dense * (1.0 - self.share * self.dropped(step))), dense

    def after_step(self, state, step: int, variant: Variant) -> tuple[dict, dict]:
        self.account.step_done("pld", variant)
        self.account.add_step("pld", *self.step_flops(step - 1))
        metrics = {names.PLD_EXPECTED_KEPT: self.schedule.num_layers - self.dropped(step - 1),
                   **self.account.metrics()}
        self.account.lap("monitor")
        return state, logged(self.run.settings, step, metrics)

    def eval_sparsify(self, state, step: int) -> Sparsify:
        return self.run.sparsify(state)

    def meta(self) -> dict:
        return {"method": self.name, "cum": self.account.cum}

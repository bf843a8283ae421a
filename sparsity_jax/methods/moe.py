"""SMoE and MoE-Dropout, SSD's MoE baselines (SSD §5 "Baselines", App. A).

  smoe         an MoE from step 0 (Fedus et al. 2022): N = `method.num_experts`, K = `method.top_k`
               (the paper's N = 3, K = 2, "to ensure similar computational costs").
  moe_dropout  SMoE-Dropout (Chen et al. 2023a): K grows linearly from K0 = `method.top_k` to
               N over training, in N − K0 + 1 stages; at K = N the step is the dense step.

Router: SSD's, untrained: α_n = x · c_n, c_n the mean of expert n's W_in columns over the
contiguous blocks of the F axis (from scratch the blocks are the experts). Chen et al.
use a frozen random router and Fedus et al. a trained gate; SSD's router makes the
schedule the only difference between the methods. Both are evaluated as the MoE they
train (K of N, exact "masked" dispatch).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from sparsity_jax.methods.accounting import Accounting, StepFlops
from sparsity_jax.methods.base import State, StepOptions, Variant, logged, saved_state
from sparsity_jax.methods.dense import DenseStep, detailed_at
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.runtime import names
from sparsity_jax.ssd.convert import centres_from_params
from sparsity_jax.ssd.inference import moe_sparsify


def moe_dropout_top_k(step: int, total_steps: int, k0: int, num_experts: int) -> int:
    """K of MoE-Dropout after `step` completed steps: K0 → N linearly over training, in
    N − K0 + 1 equal stages (K changes N − K0 times; each K compiles once)."""
    stages = num_experts - k0 + 1
    return min(num_experts, k0 + (stages * step) // max(total_steps, 1))


@dataclasses.dataclass(frozen=True)
class MoEStep(DenseStep):
    """The device side of the methods that train MoE steps (ssd's sparse phases, smoe,
    moe_dropout): a step with `variant.top_k` = K > 0 runs every FFN in MoE mode, K of
    N experts, router centres recomputed from the differentiated W_in (gradients flow
    through them, SSD §4.1); it records nothing and leaves the unit state unchanged. K = 0
    is the dense step."""

    moe: MoESpec | None = None

    @classmethod
    def of(cls, settings, mesh, **fields) -> "MoEStep":
        s = settings.method
        spec = MoESpec(centres=jnp.zeros((0,)), num_experts=s.num_experts, top_k=s.top_k, dispatch=s.dispatch,
                       capacity_factor=s.capacity_factor, router_grad=s.router_grad)
        return super().of(settings, mesh, moe=spec, **fields)

    def options(self, params, state: State, sparsify: Sparsify, variant: Variant) -> StepOptions:
        opts = super().options(params, state, sparsify, variant)
        if not variant.top_k:
            return opts
        moe = self.moe.replace(top_k=variant.top_k, centres=centres_from_params(params, self.moe.num_experts))
        return StepOptions(dataclasses.replace(opts.sparsify, mode="moe", moe=moe))

    def update(self, state: State, records: dict, variant: Variant) -> tuple[State, dict]:
        return ({}, {}) if variant.top_k else super().update(state, records, variant)

    def host(self, run, meta: dict | None = None) -> "MoEBaseline":
        return MoEBaseline(run, saved_state(meta))


class MoEBaseline:
    """smoe / moe_dropout: K per step, FLOPs of the MoE steps, MoE evaluation."""

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run, self.cfg = run, run.settings.method
        self.name = self.cfg.name
        self.flops = flops or StepFlops(run)
        self.account = Accounting((saved or {}).get("cum"))

    def top_k(self, step: int) -> int:
        if self.name == "smoe":
            return self.cfg.top_k
        k = moe_dropout_top_k(step, self.run.settings.train.steps, self.cfg.top_k, self.cfg.num_experts)
        return 0 if k == self.cfg.num_experts else k

    def variant(self, step: int) -> Variant:
        k = self.top_k(step)
        return Variant(top_k=k, detailed=not k and detailed_at(self.run.settings, step))

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        return self.flops(self.top_k(step)), self.flops(0)

    def after_step(self, state, step: int, variant: Variant) -> tuple[dict, dict]:
        k = variant.top_k
        self.account.step_done("sparse" if k else "dense", variant)
        self.account.add_step("sparse" if k else "dense", *self.step_flops(step - 1))
        metrics = {names.SSD_TOP_K: float(k or self.cfg.num_experts), **self.account.metrics()}
        self.account.lap("monitor")  # host work: FLOPs of newly compiled variants
        return state, logged(self.run.settings, step, metrics)

    def eval_sparsify(self, state, step: int) -> Sparsify:
        """The MoE of the last trained step (K of N, centres from the current W_in, exact
        masked dispatch); the run's dense settings once moe_dropout's K reached N."""
        k = self.top_k(max(step - 1, 0))
        if not k:
            return self.run.sparsify(state)
        return moe_sparsify(centres_from_params(state["params"], self.cfg.num_experts), self.cfg.num_experts, k,
                            dispatch="masked", capacity_factor=self.cfg.capacity_factor)

    def meta(self) -> dict:
        return {"method": self.name, "cum": self.account.cum}

"""SMoE and MoE-Dropout, SSD's MoE baselines (SSD §5 "Baselines", App. A).

  smoe         an MoE from step 0 (Fedus et al. 2022): N = `ssd.num_experts`, K = `ssd.top_k`
               (the paper's N = 3, K = 2, "to ensure similar computational costs").
  moe_dropout  SMoE-Dropout (Chen et al. 2023a): K grows linearly from K0 = `ssd.top_k` to
               N over training, in N − K0 + 1 stages; at K = N the step is the dense step.

Router: SSD's, untrained: α_n = x · c_n, c_n the mean of expert n's W_in columns over the
contiguous blocks of the F axis (from scratch the blocks are the experts). Chen et al.
use a frozen random router and Fedus et al. a trained gate; SSD's router makes the
schedule the only difference between the methods. Both are evaluated as the MoE they
train (K of N, exact "masked" dispatch).
"""
from __future__ import annotations

from sparsity_jax.methods.accounting import Accounting, StepFlops
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names


def moe_dropout_top_k(step: int, total_steps: int, k0: int, num_experts: int) -> int:
    """K of MoE-Dropout after `step` completed steps: K0 → N linearly over training, in
    N − K0 + 1 equal stages (K changes N − K0 times; each K compiles once)."""
    stages = num_experts - k0 + 1
    return min(num_experts, k0 + (stages * step) // max(total_steps, 1))


class MoEBaseline:
    """smoe / moe_dropout: K per step, FLOPs of the MoE steps, MoE evaluation."""

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run, self.ssd = run, run.settings.ssd
        self.name = self.ssd.method
        self.flops = flops or StepFlops(run)
        self.account = Accounting((saved or {}).get("cum"))

    def top_k(self, step: int) -> int:
        if self.name == "smoe":
            return self.ssd.top_k
        k = moe_dropout_top_k(step, self.run.settings.train.steps, self.ssd.top_k, self.ssd.num_experts)
        return 0 if k == self.ssd.num_experts else k

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        return self.flops(self.top_k(step)), self.flops(0)

    def after_step(self, state, step: int, detailed: bool = False) -> tuple[dict, dict]:
        k = self.top_k(step - 1)
        self.account.step_done("sparse" if k else "dense", (k, detailed))
        self.account.add_step("sparse" if k else "dense", *self.step_flops(step - 1))
        metrics = {names.SSD_TOP_K: float(k or self.ssd.num_experts), **self.account.metrics()}
        self.account.lap("monitor")  # host work: FLOPs of newly compiled variants
        return state, metrics

    def eval_sparsify(self, state, step: int) -> Sparsify:
        """The MoE of the last trained step (K of N, centres from the current W_in, exact
        masked dispatch); the run's dense settings once moe_dropout's K reached N."""
        k = self.top_k(max(step - 1, 0))
        if not k:
            return self.run.sparsify(state)
        from sparsity_jax.ssd.convert import centres_from_params
        from sparsity_jax.ssd.inference import moe_sparsify

        return moe_sparsify(centres_from_params(state["params"], self.ssd.num_experts), self.ssd.num_experts, k,
                            dispatch="masked", capacity_factor=self.ssd.capacity_factor)

    def meta(self) -> dict:
        return {"method": self.name, "cum": self.account.cum}

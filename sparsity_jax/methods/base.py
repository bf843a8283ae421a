"""The interface between the trainer and a training method, and the dense method.

The trainer asks its method, each step: which compiled step variant to run (`top_k`:
0 the dense step, K > 0 the MoE step with K experts per token), what that step costs
(`step_flops`), and after it ran, `after_step` (accounting, SSD's clustering and
switches; it may return a new state). `eval_sparsify` says how to evaluate the model
the method is training; `meta` is saved in each checkpoint and given back on resume.
"""
from __future__ import annotations

from typing import Any, Protocol

from sparsity_jax.methods.accounting import Accounting, StepFlops
from sparsity_jax.nn.sparsify import Sparsify

State = dict[str, Any]


class TrainingMethod(Protocol):
    """What the trainer needs of a training method (host side, once per step)."""

    name: str
    account: Accounting

    def top_k(self, step: int) -> int:
        """K of the MoE step that trains step `step` + 1; 0 for the dense step."""

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        """(FLOPs, all-dense-equivalent FLOPs) of the step that trains step `step` + 1."""

    def after_step(self, state: State, step: int, detailed: bool = False) -> tuple[State, dict]:
        """Accounts the finished step `step` (1-based; `detailed`: the metrics variant ran);
        returns (state, metrics of split "ssd", empty when there is nothing to log)."""

    def eval_sparsify(self, state: State, step: int) -> Sparsify:
        """FFN settings to evaluate `state` after `step` completed steps."""

    def meta(self) -> dict:
        """JSON-able method state for the checkpoint metadata."""


class Dense:
    """Plain dense training (also with dead-unit masking: the mask is train state, applied
    by the step and by `run.sparsify`). Logs nothing of its own."""

    name = "dense"

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run = run
        self.flops = flops or StepFlops(run)
        self.account = Accounting((saved or {}).get("cum"))

    def top_k(self, step: int) -> int:
        return 0

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        dense = self.flops(0)
        return dense, dense

    def after_step(self, state: State, step: int, detailed: bool = False) -> tuple[State, dict]:
        return state, {}

    def eval_sparsify(self, state: State, step: int) -> Sparsify:
        return self.run.sparsify(state)

    def meta(self) -> dict:
        return {"method": self.name}


def saved_state(meta: dict | None) -> dict:
    """The method's part of a checkpoint's metadata (key "method"; "ssd" before it was
    renamed), {} for none."""
    meta = meta or {}
    return meta.get("method") or meta.get("ssd") or {}


def trained_sparse(meta: dict | None) -> bool:
    """Whether a checkpoint trained as an MoE: an SSD run whose controller shows a sparse
    phase, or an smoe / moe_dropout run."""
    saved = saved_state(meta)
    ctrl = saved.get("controller") or {}
    return (saved.get("method") in ("smoe", "moe_dropout") or ctrl.get("phase") == "sparse"
            or any(p[0] == "sparse" for p in ctrl.get("phases", [])))

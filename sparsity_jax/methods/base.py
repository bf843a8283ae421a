"""The interface between the trainer and a training method: a device side and a host side.

The device side (`StepMethod`, a frozen object built from the settings and the mesh
before the run exists) is what the jitted train step runs: the entries it adds to the
train state and their shardings, the forward's options for one step (`StepOptions`,
pure, traced with the differentiated parameters) and the update of its entries after
the gradient. `train` never names a method: it calls these.

The host side (`TrainingMethod`, built by `StepMethod.host` once the run is built, from a
checkpoint's metadata on resume) says, each step, which compiled variant of the step to
run (`variant`, static and hashable), what that step costs (`step_flops`), and after it
ran `after_step` (accounting, SSD's clustering and switches; it may return a new
state). `eval_sparsify` says how to evaluate the model it trains; `meta` is saved in each
checkpoint (key "method") and given back on resume.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, NamedTuple, Protocol

import jax

from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.devices import sharding as shd

Array = jax.Array
State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Variant:
    """The static part of one train step; each value compiles once."""

    top_k: int = 0          # K of the MoE step (SSD's sparse phase, SMoE, MoE-Dropout); 0: the dense step
    detailed: bool = False  # the hidden-unit use and percentiles (split "units") of this step


class StepOptions(NamedTuple):
    """The keyword arguments of `runtime.forward.forward` a method sets for one step."""

    sparsify: Sparsify = Sparsify()
    record: str | None = None
    layer_keep: Array | None = None   # (L,) bool: blocks run (PLD)
    layer_scale: Array | None = None  # (L,) scale of a kept block's update (PLD)
    reduce_mask: Callable | None = None  # the recorded mask → activation ratio and the method's records


class StepMethod(Protocol):
    """The device side of a training method (built from settings and mesh, before the run)."""

    base_variant: Hashable  # the plain step's variant (what a caller gets without naming one)

    def init_state(self, key: Array) -> State:
        """Entries the method adds to the train state at step 0 (e.g. `units`, `ssd_labels`)."""

    def state_shardings(self, abstract: State, mesh: jax.sharding.Mesh) -> State:
        """Shardings of the entries of `init_state` (their abstract values given)."""

    def options(self, params, state: State, sparsify: Sparsify, variant: Hashable) -> StepOptions:
        """Pure: the forward's options of the step `variant` on `params` (the differentiated
        parameters: MoE router centres come from them) and the state before the step."""

    def merge_records(self, acc: dict, new: dict) -> dict:
        """The method's records of two micro-batches combined (records: what its
        `reduce_mask` returned beside the activation ratio)."""

    def update(self, state: State, records: dict, variant: Hashable) -> tuple[State, dict]:
        """Pure, after the gradient: (new values of the method's state entries, step
        metrics; a "detailed" dict is the split "units" record)."""

    def host(self, run, meta: dict | None = None) -> "TrainingMethod":
        """The host side for a built run (`train.setup.TrainRun`), resumed from a
        checkpoint's metadata when given."""


class TrainingMethod(Protocol):
    """The host side of a training method, once per step."""

    name: str
    account: Any  # methods.accounting.Accounting (which imports this module's Variant)

    def variant(self, step: int) -> Hashable:
        """The static variant of the step that trains step `step` + 1."""

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        """(FLOPs, all-dense-equivalent FLOPs) of the step that trains step `step` + 1."""

    def after_step(self, state: State, step: int, variant: Hashable) -> tuple[State, dict]:
        """Accounts the finished step `step` (1-based) run as `variant`; returns (state,
        metrics of split `names.METHOD`, empty when there is nothing to log now: see
        `logged`)."""

    def eval_sparsify(self, state: State, step: int) -> Sparsify:
        """FFN settings to evaluate `state` after `step` completed steps."""

    def meta(self) -> dict:
        """JSON-able method state for the checkpoint metadata."""


def replicated_entries(abstract: State, mesh: jax.sharding.Mesh) -> State:
    """Every entry of a method's state replicated (they are per-layer tables, (L, F))."""
    return jax.tree.map(lambda _: shd.replicated(mesh), abstract)


def logged(settings, step: int, metrics: dict, event: bool = False) -> dict:
    """`metrics` of the finished `step` when they go into the log (the log interval, the
    last step, or an `event` such as SSD's clustering or switch), else {}."""
    t = settings.train
    return metrics if event or step % t.log_every == 0 or step == t.steps else {}


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

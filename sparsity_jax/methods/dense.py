"""Dense training, with hidden-unit tracking when the run records masks and dead-unit
masking when `unit_mask.at_step` > 0 (`methods.units`); the base of every method's
device side (`DenseStep`)."""
from __future__ import annotations

import dataclasses
import functools

from sparsity_jax.methods.accounting import Accounting, StepFlops
from sparsity_jax.methods.base import State, StepOptions, Variant, replicated_entries, saved_state
from sparsity_jax.methods.units import UnitConfig, init_units, mask_stats, sparsify_for, update_units
from sparsity_jax.nn.sparsify import Sparsify


@dataclasses.dataclass(frozen=True)
class DenseStep:
    """The dense step: the run's record (train.record) and, with `units`, the unit state
    (tracking, dead-unit mask) under `units` in the train state."""

    record: str | None
    units: UnitConfig | None = None
    base_variant = Variant()  # the plain step: dense, no detailed metrics

    @classmethod
    def of(cls, settings, mesh, **fields) -> "DenseStep":
        """The step of a run's `Settings` on `mesh` (`fields`: a subclass's own)."""
        record = None if settings.train.record == "none" else settings.train.record
        return cls(record=record, units=UnitConfig.of(settings, mesh), **fields)

    def init_state(self, key) -> State:
        return {} if self.units is None else {"units": init_units(self.units)}

    state_shardings = staticmethod(replicated_entries)

    def options(self, params, state: State, sparsify: Sparsify, variant: Variant) -> StepOptions:
        if self.units is None:
            return StepOptions(sparsify, self.record)
        return StepOptions(sparsify_for(state["units"], self.units, sparsify), self.record,
                           reduce_mask=functools.partial(mask_stats, ucfg=self.units, detailed=variant.detailed))

    def merge_records(self, acc: dict, new: dict) -> dict:
        """Units used in any micro-batch; the use metrics of the last one."""
        return dict(new, used=acc["used"] | new["used"]) if "used" in new else new

    def update(self, state: State, records: dict, variant: Variant) -> tuple[State, dict]:
        if self.units is None:
            return {}, {}
        units, stats = update_units(state["units"], records["used"], state["step"] + 1, state["rng"], self.units)
        metrics = dict(stats)
        if "detailed" in records:  # the "units" record: use, percentiles and the tracking stats
            metrics["detailed"] = {**records["detailed"], **stats}
        return {"units": units}, metrics

    def host(self, run, meta: dict | None = None):
        kind = DeadUnitMasking if self.units is not None and self.units.masking else Dense
        return kind(run, saved_state(meta))


def detailed_at(settings, step: int) -> bool:
    """Whether the dense step that trains step `step` + 1 adds the detailed unit metrics
    (every `train.metrics_every` steps of a run that tracks units)."""
    every = settings.train.metrics_every
    return bool(every and settings.train.record in ("mask", "both") and (step + 1) % every == 0)


class Dense:
    """Plain dense training (also with dead-unit masking: the mask is train state, applied
    by the step and by `run.sparsify`). Logs nothing of its own."""

    name = "dense"

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run = run
        self.flops = flops or StepFlops(run)
        self.account = Accounting((saved or {}).get("cum"))

    def variant(self, step: int) -> Variant:
        return Variant(detailed=detailed_at(self.run.settings, step))

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        dense = self.flops(0)
        return dense, dense

    def after_step(self, state: State, step: int, variant: Variant) -> tuple[State, dict]:
        return state, {}

    def eval_sparsify(self, state: State, step: int) -> Sparsify:
        return self.run.sparsify(state)

    def meta(self) -> dict:
        return {"method": self.name}


class DeadUnitMasking(Dense):
    """Dense training with dead-unit masking: evaluated with the mask (`run.sparsify`)."""

    name = "unit_mask"

    def meta(self) -> dict:
        u = self.run.settings.unit_mask
        return {"method": self.name, "at_step": u.at_step, "window": u.window, "random": u.random}

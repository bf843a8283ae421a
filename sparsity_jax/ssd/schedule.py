"""When SSD switches between dense and sparse (MoE) training (SSD §4.2, App. A, App. C).

A dense phase ends when the ARI of two consecutive neuron clusterings exceeds τ; the
sparse phase after it lasts a fixed multiple of that dense phase; the last share of
training is dense. `decide` is the controller, pure host logic over a JSON-able state.
"""
from __future__ import annotations

import dataclasses
from typing import Any

DENSE, SPARSE = "dense", "sparse"


@dataclasses.dataclass(frozen=True)
class SwitchConfig:
    """The schedule's constants (validated where a run's settings are: 0 <= r, l, r + l < 1)."""

    total_steps: int
    monitor_every: int = 3000       # M
    ari_threshold: float = 0.9      # τ
    sparse_share: float = 0.5       # r
    final_dense_share: float = 0.1  # l

    @property
    def proportion(self) -> float:
        """Sparse steps per preceding dense step: r / (1 − r − l), so that sparse phases
        make up ≈ r of training (App. C: 18,000 dense steps → 22,500 sparse steps at
        proportion 1.25 when r = 0.5, l = 0.1)."""
        return self.sparse_share / (1.0 - self.sparse_share - self.final_dense_share)

    @property
    def final_dense_start(self) -> int:
        return int(round(self.total_steps * (1.0 - self.final_dense_share)))


def initial_state() -> dict[str, Any]:
    """The controller's state: a JSON-able dict, stored in the checkpoint's metadata, so
    resuming mid-phase continues the same schedule."""
    return {"phase": DENSE, "phase_start": 0, "sparse_end": None, "phases": [], "ari": []}


def is_monitor_step(cfg: SwitchConfig, state: dict, step: int) -> bool:
    """Whether to recluster after `step` completed steps (dense phases only).

    The clustering itself (`ssd.kmeans.moefy_clustering`) and the ARI (`ssd.ari`) are
    computed by the trainer at the steps this names.
    """
    return (state["phase"] == DENSE and step > state["phase_start"] and step < cfg.final_dense_start
            and (step - state["phase_start"]) % cfg.monitor_every == 0)


def decide(cfg: SwitchConfig, state: dict, step: int, ari: float | None = None) -> tuple[dict, str | None]:
    """Advances the controller after `step` completed steps.

    Dense → sparse: during a dense phase the neurons are clustered every `monitor_every`
    (M) steps counted from the phase start, warm-started from the previous clustering;
    when the adjusted Rand index between two consecutive clusterings exceeds τ, the
    model switches to sparse training. Sparse → dense: the sparse phase lasts
    `r / (1 − r − l)` × the steps of the dense phase that preceded it (r = sparse share
    of training, l = final dense share); the last l of training is always dense.

    `ari` is the similarity of this monitor step's clustering with the previous one
    (None when this step is not a monitor step or there was no previous clustering).
    Returns (new_state, action) with action "to_sparse", "to_dense" or None.
    """
    state = dict(state, phases=list(state["phases"]), ari=list(state["ari"]))
    if ari is not None:
        state["ari"].append([step, float(ari)])
    if state["phase"] == SPARSE and step >= state["sparse_end"]:
        state["phases"].append([SPARSE, state["phase_start"], step])
        state.update(phase=DENSE, phase_start=step, sparse_end=None)
        return state, "to_dense"
    if state["phase"] == DENSE and ari is not None and ari > cfg.ari_threshold and step < cfg.final_dense_start:
        dense_steps = step - state["phase_start"]
        sparse_end = min(step + int(round(cfg.proportion * dense_steps)), cfg.final_dense_start)
        if sparse_end > step:
            state["phases"].append([DENSE, state["phase_start"], step])
            state.update(phase=SPARSE, phase_start=step, sparse_end=sparse_end)
            return state, "to_sparse"
    return state, None


def finish(state: dict, total_steps: int) -> list[list]:
    """All phases [kind, start, end) including the one still open at `total_steps`."""
    return state["phases"] + [[state["phase"], state["phase_start"], total_steps]]


def simulate(cfg: SwitchConfig, ari_at) -> list[list]:
    """Runs the controller over a whole training with `ari_at(step)` giving the ARI at
    each monitor step (None at the first one); returns the phases. For tests and
    planning (e.g. the FLOPs a schedule will save)."""
    state, previous = initial_state(), False
    for step in range(1, cfg.total_steps + 1):
        ari = None
        if is_monitor_step(cfg, state, step):
            ari = ari_at(step) if previous else None
            previous = True
        state, _ = decide(cfg, state, step, ari)
    return finish(state, cfg.total_steps)


def sparse_fraction(phases: list[list]) -> float:
    total = sum(end - start for _, start, end in phases)
    return sum(end - start for kind, start, end in phases if kind == SPARSE) / max(total, 1)

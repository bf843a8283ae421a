"""What a training step costs: FLOPs from XLA's cost analysis and a wall-clock ledger.

`step_flops(run, top_k)` counts one train step of a built run (shapes only, nothing
runs); `StepFlops` caches it per compiled variant; `block_share` is one Transformer
block's share of a step, for PLD's expected FLOPs; `Accounting` keeps the cumulative
FLOPs, their all-dense equivalent, steps per phase and seconds per bucket of a run.
"""
from __future__ import annotations

import time
from typing import Any

import jax

from sparsity_jax.methods.base import Variant
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names


def step_flops(run, top_k: int = 0) -> float | None:
    """FLOPs of one train step of `run` (a `train.setup.TrainRun`) with MoE K = `top_k` (0: the
    dense step), from XLA's cost analysis of the lowered (pre-optimisation) HLO.

    The lowered HLO counts every dot on every backend; the compiled module's analysis
    does not on GPU (XLA:GPU leaves cuBLAS custom calls out). With train.grad_accum = G
    the micro-batches run in a `lax.scan`, whose body the analysis counts once, so the
    count is multiplied by G (the optimizer update outside the scan, a negligible share,
    is then counted G times); scanned or rematerialised blocks count as the per-layer
    blocks without remat (model FLOPs, as MFU counts them: `TrainRun.lowered_for_counting`). None where the backend gives no cost analysis.
    """
    return run.model_flops(Sparsify(), Variant(top_k=top_k))


class StepFlops:
    """`step_flops` of a run, computed once per K."""

    def __init__(self, run):
        self.run, self._cache = run, {}

    def __call__(self, top_k: int = 0) -> float | None:
        if top_k not in self._cache:
            self._cache[top_k] = step_flops(self.run, top_k)
        return self._cache[top_k]


def block_share(model_cfg, seq_len: int) -> float:
    """Share of ONE Transformer block in the model's train-step FLOPs, from shapes: per
    token a block costs 2·(attention + FFN params) + 4·T·d (scores and values, full T×T
    as XLA computes them) forward, the LM head 2·d·V; backward is 2× forward."""
    m = model_cfg
    block = (m.non_embedding_params() / m.num_layers) * 2 + 4 * seq_len * m.d_model
    head = 2 * m.d_model * m.vocab_size
    return block / (m.num_layers * block + head)


class Accounting:
    """Cumulative FLOPs (and their all-dense equivalent), steps per phase and wall-clock
    per bucket.

    `cum` is JSON-able and lives in the checkpoint metadata, so a resumed run's totals
    continue. Buckets: the phase of each step (dense / sparse / pld), "compile" (the first
    call of each compiled step variant, which compiles before it dispatches), "monitor"
    (SSD's clustering and switches, host work between steps); the trainer's evaluations,
    checkpoint saves and metric writes go to "eval", "checkpoint" and "log" (`aside`,
    buckets `names.ASIDE`).

    Steps run asynchronously, so a lap charges the work dispatched since the previous one
    only up to what the host waited for. `step_done(..., sync=True)` waits for the state
    first: SSD does that before clustering or switching, so the steps still in flight are
    charged to their own phase, not to the monitor work.
    """

    def __init__(self, saved: dict | None = None):
        cum = saved or {}
        self.cum = {"flops": cum.get("flops", 0.0), "dense_equiv_flops": cum.get("dense_equiv_flops", 0.0),
                    "seconds": dict(cum.get("seconds", {})), "steps": dict(cum.get("steps", {}))}
        self._t = time.perf_counter()
        self._compiled: set = set()

    def restart(self) -> None:
        """Starts the next lap now (just before the first step: set-up and the initial
        evaluation are charged to no bucket)."""
        self._t = time.perf_counter()

    def step_done(self, phase: str, variant: Any, state=None, sync: bool = False) -> None:
        """Charges the time since the previous lap to a finished step of `phase` run by the
        compiled step `variant`: to "compile" on that variant's first step in this
        process, else to `phase`. With `sync`, first waits for `state`."""
        if sync:
            jax.block_until_ready(state)
        first = variant not in self._compiled
        self._compiled.add(variant)
        self.lap("compile" if first else phase)

    def lap(self, bucket: str) -> None:
        """Charges the wall-clock since the previous lap to `bucket`."""
        now = time.perf_counter()
        self.cum["seconds"][bucket] = self.cum["seconds"].get(bucket, 0.0) + now - self._t
        self._t = now

    def aside(self, bucket: str, seconds: float) -> None:
        """Charges `seconds` measured by the caller (e.g. an evaluation between two steps)
        to `bucket` and leaves them out of the next lap."""
        self.cum["seconds"][bucket] = self.cum["seconds"].get(bucket, 0.0) + seconds
        self._t += seconds

    def add_step(self, phase: str, flops: float | None, dense_flops: float | None) -> None:
        """Counts one step of `phase` (charge its time with `step_done` first)."""
        self.cum["steps"][phase] = self.cum["steps"].get(phase, 0) + 1
        self.cum["flops"] += flops or 0.0
        self.cum["dense_equiv_flops"] += dense_flops or 0.0

    def metrics(self) -> dict[str, Any]:
        """The ledger as logged quantities (split `names.METHOD`)."""
        return {names.SSD_CUM_FLOPS: self.cum["flops"],
                names.SSD_FLOPS_SPEEDUP: self.cum["dense_equiv_flops"] / max(self.cum["flops"], 1.0),
                names.SSD_SECONDS: dict(self.cum["seconds"]),
                names.SSD_STEPS: {k: float(v) for k, v in self.cum["steps"].items()}}

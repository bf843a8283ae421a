"""One checkpoint at the per-layer thresholds of a target CETT: the thresholds themselves
(`thresholds_at_cett` → `CheckpointThresholds`, `sparsity-jax cett`), and the predictor and
affinity analyses at them: `search.thresholds` finds the thresholds, `predict` trains /
measures at them (the two packages share a floor, so the workflow joins them)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sparsity_jax.predict.checkpoint_affinity import Affinity, affinity_of
from sparsity_jax.predict.analysis import Log, Predictivity, predictivity
from sparsity_jax.predict.lowrank import PredictorConfig
from sparsity_jax.search.thresholds import thresholds_for_cett


@dataclasses.dataclass(frozen=True)
class CheckpointThresholds:
    """Per-layer thresholds of one checkpoint for a target CETT over all real validation
    tokens, with the CETT they realise and their sparsity (lists of L floats)."""

    workdir: str
    step: int
    target_cett: float
    threshold: list[float]  # skip neuron i where |a_i|·‖W_out,i‖ < threshold
    realised_cett: list[float]
    sparsity: list[float]  # fraction of real token×neuron pairs below the threshold
    activation_ratio: float  # 1 − mean sparsity over the layers

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def thresholds_at_cett(run, params, val, target_cett: float, *, workdir, step: int) -> CheckpointThresholds:
    """`search.thresholds_for_cett` of one checkpoint (`run`: its `ModelRun`, `val`: the
    validation batches), as a typed result."""
    res = thresholds_for_cett((run.graphdef, params), val, target_cett)
    return CheckpointThresholds(str(workdir), step, target_cett, res.threshold.tolist(), res.realised_cett.tolist(),
                                res.sparsity.tolist(), float(1 - res.sparsity.mean()))


def predictivity_of_checkpoint(run, params, val, target_cett: float | None, cfg: PredictorConfig, ks: Sequence[int],
                               *, workdir, step: int, log: Log = lambda msg: None) -> Predictivity:
    """`predictivity` with the labels' thresholds found here: those of `target_cett` on
    `val` (with their realised CETT and sparsity), or zeros for a_i != 0 labels (None)."""
    if target_cett is None:
        return dataclasses.replace(predictivity(run, params, val, np.zeros(run.model_cfg.num_layers), None, cfg, ks,
                                                workdir=workdir, step=step, log=log), workdir=str(workdir))
    thr = thresholds_for_cett((run.graphdef, params), val, target_cett)
    log(f"step {step}: thresholds at CETT {target_cett:g}: " + " ".join(f"{t:.5f}" for t in thr.threshold)
        + f" (sparsity {thr.sparsity.mean():.4f})")
    result = predictivity(run, params, val, thr.threshold, target_cett, cfg, ks, workdir=workdir, step=step, log=log)
    return dataclasses.replace(result, realised_cett=thr.realised_cett.round(6).tolist(),
                               cett_sparsity=thr.sparsity.round(6).tolist(), workdir=str(workdir))


def affinity_at_cett(graphdef, params, batches, target_cett: float, windows: Sequence[int],
                     neurons: int | None = None, *, step: int, workdir: str | None = None) -> Affinity:
    """`affinity_of` at the per-layer thresholds of `target_cett` on `batches`, with the
    checkpoint's step, thresholds and realised CETT."""
    thr = thresholds_for_cett((graphdef, params), batches, target_cett)
    return dataclasses.replace(
        affinity_of(graphdef, params, batches, thr.threshold, windows, neurons), step=step, target_cett=target_cett,
        thresholds=thr.threshold.tolist(), realised_cett=thr.realised_cett.round(6).tolist(), workdir=workdir)

"""Model-level sparsity searches: per-layer CETT thresholds of a model on validation
batches, PPL-p% sparsity over checkpoints (Sparsing Law App. C) with the stabilising
strategy (App. B), baselines' Pareto curves and neuron statistics; the workflows over a
trained workdir return typed results with `to_json()`: `sweep.sweep_trained` (PPL-p% over
the last checkpoints, `PplSweep`) and `compare.model_sparsity` (compare's per-model
analysis, `ModelSparsity`); `workflows.evaluation` evaluates every checkpoint on them."""
from sparsity_jax.search.compare import ModelSparsity, model_sparsity
from sparsity_jax.search.ppl import PplResult, PplSearch, find_crossing, ppl_p_sparsity
from sparsity_jax.search.sweep import PplSweep, stabilised_sweep, sweep_trained
from sparsity_jax.search.thresholds import (
    CettThresholds, DenseCache, dense_pass, sparse_pass, thresholds_for_cett,
)

__all__ = [
    "CettThresholds", "DenseCache", "ModelSparsity", "PplResult", "PplSearch", "PplSweep", "dense_pass",
    "find_crossing", "model_sparsity", "ppl_p_sparsity", "sparse_pass",
    "stabilised_sweep", "sweep_trained", "thresholds_for_cett",
]

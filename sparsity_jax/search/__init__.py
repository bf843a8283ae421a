"""Model-level sparsity searches: per-layer CETT thresholds of a model on validation
batches, PPL-p% sparsity over checkpoints (Sparsing Law App. C) with the stabilising
strategy (App. B), baselines' Pareto curves and neuron statistics;
`checkpoint_sparsity.model_sparsity` (compare's per-model analysis) returns a typed result
with `to_json()` (`ModelSparsity`); `workflows.ppl_sweep` runs the sweep over a trained
workdir (`PplSweep`)."""
from sparsity_jax.search.checkpoint_sparsity import ModelSparsity, model_sparsity
from sparsity_jax.search.ppl import PplResult, PplSearch, find_crossing, ppl_p_sparsity
from sparsity_jax.search.sweep import stabilised_sweep
from sparsity_jax.search.thresholds import (
    CettThresholds, DenseCache, dense_pass, sparse_pass, thresholds_for_cett,
)

__all__ = [
    "CettThresholds", "DenseCache", "ModelSparsity", "PplResult", "PplSearch", "dense_pass",
    "find_crossing", "model_sparsity", "ppl_p_sparsity", "sparse_pass",
    "stabilised_sweep", "thresholds_for_cett",
]

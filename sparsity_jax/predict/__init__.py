"""Low-rank activation predictors (ReLU² Wins §4 (2), §5.2, App. A.2): active-neuron labels
at a CETT, training all layers at once, evaluation (recall, prediction sparsity, PPL with
the predicted FFN mode) and saving next to the checkpoint; the analyses at given thresholds
(`analysis.predictivity`, `affinity.affinity_of`) return typed results with `to_json()`
(`workflows.at_cett` finds the thresholds of a target CETT first)."""
from sparsity_jax.predict.analysis import DeploymentAspects, Predictivity, deployment_aspects, predictivity
from sparsity_jax.predict.checkpoint_affinity import Affinity, affinity_of
from sparsity_jax.predict.data import TokenSet, active_labels, record_active, token_set
from sparsity_jax.predict.lowrank import PredictorConfig, init_params, rank_for_share, resolve_rank, scores, spec
from sparsity_jax.predict.store import load, predictor_dir, save
from sparsity_jax.predict.train import train_predictors

__all__ = ["Affinity", "DeploymentAspects", "Predictivity", "PredictorConfig", "TokenSet", "active_labels",
           "affinity_of", "deployment_aspects", "init_params", "load", "predictivity",
           "predictor_dir", "rank_for_share", "record_active", "resolve_rank", "save", "scores", "spec", "token_set",
           "train_predictors"]

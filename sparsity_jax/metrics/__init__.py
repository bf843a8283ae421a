"""Pure metric functions over arrays (no TensorFlow): each takes an explicit token mask
and an optional `axis_name` for use inside pmap / shard_map. Activation ratio, hidden-unit
use, CETT and the exact threshold search, top-k / FAT-ε baselines, neuron statistics,
predictivity (ReLU² Wins §4) and hardware affinity (reuse ratio, co-activation)."""
from sparsity_jax.metrics.activation import activation_ratio
from sparsity_jax.metrics.affinity import coactivation, coactivation_from_counts, coactivation_gap, reuse_ratio
from sparsity_jax.metrics.baselines import fat_mask, topk_mask, zero_mask
from sparsity_jax.metrics.cett import cett, cett_curve, neuron_magnitudes
from sparsity_jax.metrics.hidden_units import (
    hidden_unit_use,
    init_unit_tracking,
    sequence_use_percentiles,
    unit_tracking_update,
    units_used,
)
from sparsity_jax.metrics.predictivity import predicted_active, predictor_metrics
from sparsity_jax.metrics.stats import dead_ratio, hot_neuron_cdf, neuron_frequency, per_token_id_activation_ratio
from sparsity_jax.metrics.threshold_pass import ScorePlacement, Scores
from sparsity_jax.metrics.threshold_search import (
    ThresholdResult, check_target_cett, find_prepared, find_threshold, prepare_search,
)
from sparsity_jax.metrics.threshold_setup import (
    PreparedSearch, Proxies, finish_setup, search_proxies, setup_search_block,
)

__all__ = [
    "ScorePlacement", "PreparedSearch", "Proxies", "Scores", "ThresholdResult", "check_target_cett", "finish_setup",
    "find_prepared", "prepare_search", "search_proxies", "setup_search_block",
    "activation_ratio", "cett", "cett_curve", "coactivation", "coactivation_from_counts", "coactivation_gap",
    "dead_ratio", "fat_mask", "find_threshold", "hidden_unit_use", "hot_neuron_cdf", "init_unit_tracking",
    "neuron_frequency", "neuron_magnitudes", "per_token_id_activation_ratio", "predicted_active",
    "predictor_metrics", "reuse_ratio", "sequence_use_percentiles", "topk_mask", "unit_tracking_update",
    "units_used", "zero_mask",
]

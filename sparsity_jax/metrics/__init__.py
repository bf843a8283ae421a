"""Pure metric functions over arrays (no TensorFlow): each takes an explicit token mask
and an optional `axis_name` for use inside pmap / shard_map."""
from sparsity_jax.metrics.activation import activation_ratio
from sparsity_jax.metrics.baselines import fat_mask, topk_mask, zero_mask
from sparsity_jax.metrics.cett import cett, cett_curve, neuron_magnitudes
from sparsity_jax.metrics.hidden_units import (
    hidden_unit_use,
    init_unit_tracking,
    sequence_use_percentiles,
    unit_tracking_update,
    units_used,
)
from sparsity_jax.metrics.stats import dead_ratio, hot_neuron_cdf, neuron_frequency, per_token_id_activation_ratio
from sparsity_jax.metrics.threshold_search import find_threshold

__all__ = [
    "activation_ratio", "cett", "cett_curve", "dead_ratio", "fat_mask", "find_threshold", "hidden_unit_use",
    "hot_neuron_cdf", "init_unit_tracking", "neuron_frequency", "neuron_magnitudes", "per_token_id_activation_ratio",
    "sequence_use_percentiles", "topk_mask", "unit_tracking_update", "units_used", "zero_mask",
]

"""Pure metric functions over arrays (no TensorFlow): each takes an explicit token mask
and an optional `axis_name` for use inside pmap / shard_map."""
from sparsity_jax.metrics.activation import activation_ratio
from sparsity_jax.metrics.hidden_units import (
    hidden_unit_use,
    init_unit_tracking,
    sequence_use_percentiles,
    unit_tracking_update,
    units_used,
)

__all__ = [
    "activation_ratio", "hidden_unit_use", "init_unit_tracking", "sequence_use_percentiles",
    "unit_tracking_update", "units_used",
]

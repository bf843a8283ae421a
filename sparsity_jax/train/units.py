"""Hidden-unit statistics and dead-unit masking inside the train step (layer-patterns
paper, W&A §2–4).

Per step (cheap, (L, F) booleans): the units used by the global batch update the
turn-on / turn-off tracking of Table 2 — units used in the first training batch,
units used ever — and, when `unit_mask.at_step = S` is set, the window of batches
before S. At the end of step S the units unused over the last `unit_mask.window`
batches (S−window+1 … S) get mask 0 for every later step (forward and gradient, through
the FFN's `unit_mask`); `unit_mask.random = True` masks a random set of the same size per
layer instead (the paper's control, §4.1). All of it lives in the train state under
`units`, so it is checkpointed and survives a restore.

Every `train.metrics_every` steps the step also returns per-layer per-token /
per-sequence / per-batch use and the within-sequence percentiles (`detailed`), computed
from the mask the forward pass already recorded. Everything (the used set, the
activation ratio, the detailed metrics) comes from ONE reduction of that mask, the
per-sequence counts (L, B, F) (`mask_stats`), so the (L, B, T, F) mask is read once. With gradient accumulation they
describe the last micro-batch (the "batch" granularity is then one micro-batch).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sparsity_jax.metrics.hidden_units import (
    init_unit_tracking,
    percentiles_from_counts,
    sequence_unit_counts,
    unit_tracking_update,
    use_from_counts,
    used_from_counts,
)
from sparsity_jax.nn.ffn import Sparsify

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UnitConfig:
    num_layers: int
    d_ff: int
    record_threshold: float = 0.0   # 0: used = a != 0 (exact-zero activations)
    batch_groups: int = 1           # 1: the global batch; data-parallel size: per device (paper)
    percentiles: tuple[int, ...] = (50, 65, 75, 90)
    mask_at_step: int = 0           # 0: no dead-unit masking
    mask_window: int = 1
    mask_random: bool = False

    @property
    def masking(self) -> bool:
        return self.mask_at_step > 0


def init_units(ucfg: UnitConfig) -> dict[str, Array]:
    shape = (ucfg.num_layers, ucfg.d_ff)
    state = {"first": jnp.zeros(shape, bool), "ever": jnp.zeros(shape, bool)}
    if ucfg.masking:
        state["window"] = jnp.zeros(shape, bool)
        state["unit_mask"] = jnp.ones(shape, jnp.float32)
    return state


def sparsify_for(units: dict[str, Array] | None, ucfg: UnitConfig | None, base: Sparsify) -> Sparsify:
    """`base` with the run's unit mask and record threshold."""
    if ucfg is None:
        return base
    rt = ucfg.record_threshold if ucfg.record_threshold > 0 else base.record_threshold
    mask = units.get("unit_mask") if units else None
    if mask is not None and base.unit_mask is not None:
        mask = mask * base.unit_mask
    return dataclasses.replace(base, unit_mask=base.unit_mask if mask is None else mask, record_threshold=rt)


def _random_keep(keep_LxF: Array, key: Array) -> Array:
    """A random mask keeping as many units per layer as `keep_LxF` does."""
    n_keep_L = jnp.sum(keep_LxF, axis=-1, keepdims=True)
    noise_LxF = jax.random.uniform(key, keep_LxF.shape)
    rank_LxF = jnp.argsort(jnp.argsort(noise_LxF, axis=-1), axis=-1)
    return rank_LxF < n_keep_L


def update_units(units: dict[str, Array], used_LxF: Array, step_after: Array, rng: Array,
                 ucfg: UnitConfig) -> tuple[dict[str, Array], dict[str, Array]]:
    """Folds one step's used units into the state; returns (units, per-layer stats)."""
    first = init_unit_tracking(used_LxF)
    tracked = {"first": units["first"], "ever": units["ever"]}
    tracked = jax.tree.map(lambda a, b: jnp.where(step_after == 1, a, b), first, tracked)
    tracked, stats = unit_tracking_update(tracked, used_LxF)
    new = dict(units, **tracked)
    if ucfg.masking:
        s, w = ucfg.mask_at_step, ucfg.mask_window
        in_window = step_after > s - w
        new["window"] = jnp.where(in_window, units["window"] | used_LxF, jnp.zeros_like(used_LxF))
        keep = new["window"]
        if ucfg.mask_random:
            keep = _random_keep(keep, jax.random.fold_in(jax.random.wrap_key_data(rng), s))
        new["unit_mask"] = jnp.where(step_after == s, keep.astype(jnp.float32), units["unit_mask"])
        stats["masked_fraction"] = 1.0 - jnp.mean(new["unit_mask"], axis=-1)
    return new, stats


def mask_stats(mask_LxBxTxF: Array, token_mask_BxT: Array, ucfg: UnitConfig | None,
               detailed: bool = False) -> dict[str, Array]:
    """One pass over the recorded mask: `act_ratio` (L,) (mean over real tokens of the
    used fraction of F), and with `ucfg` the batch's `used` units (L, F) and, when
    `detailed`, the per-layer use fractions and percentiles under `detailed`."""
    count_LxBxF, length_B = sequence_unit_counts(mask_LxBxTxF, token_mask_BxT)
    use = use_from_counts(count_LxBxF, length_B, batch_groups=ucfg.batch_groups if ucfg else 1)
    out = {"act_ratio": use["per_token"]}  # unused outputs are dropped by XLA
    if ucfg is None:
        return out
    out["used"] = used_from_counts(count_LxBxF)
    if detailed:
        pct = percentiles_from_counts(count_LxBxF, length_B, ucfg.percentiles)
        stats = {f"use_{k}": v for k, v in use.items()}
        stats.update({f"seq_use_p{p}": v for p, v in pct.items()})
        out["detailed"] = stats
    return out

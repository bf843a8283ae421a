"""Hidden-unit tracking and dead-unit masking inside the train step (W&A §2–4).

Every step the units used by the batch update the turn-on / turn-off tracking of
Table 2; every `train.metrics_every` steps the per-layer per-token / per-sequence /
per-batch use and within-sequence percentiles are added. All of it comes from ONE
reduction of the recorded (L, B, T, F) mask, the per-sequence counts (`mask_stats`);
with gradient accumulation the used units are those of any micro-batch and the use
metrics describe the last one. The state lives in the train state under `units`, so it
is checkpointed.

Dead-unit masking (W&A §4.1): at the end of step S = `unit_mask.at_step` the units unused
over the last `unit_mask.window` batches (S − window + 1 … S) get mask 0 for every later
step, forward and gradient (the FFN's `unit_mask`); `unit_mask.random` masks a random set
of the same size per layer instead (the paper's control). The window and the mask are
part of `units`.
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
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.runtime import names

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

    @classmethod
    def of(cls, settings, mesh) -> "UnitConfig | None":
        """Tracking settings of a run (None when it records no masks); metrics_batch_groups
        -1 is the data-parallel size of `mesh`."""
        t, u = settings.train, settings.unit_mask
        if t.record not in ("mask", "both"):
            return None
        groups = mesh.shape["data"] * mesh.shape["fsdp"] if t.metrics_batch_groups == -1 else t.metrics_batch_groups
        return cls(num_layers=settings.model.num_layers, d_ff=settings.model.d_ff,
                   record_threshold=t.record_threshold, batch_groups=groups, mask_at_step=u.at_step,
                   mask_window=u.window, mask_random=u.random)


def init_units(ucfg: UnitConfig) -> dict[str, Array]:
    """The `units` state: first / ever used sets and, when masking, the window and the mask (all 1)."""
    shape = (ucfg.num_layers, ucfg.d_ff)
    state = {"first": jnp.zeros(shape, bool), "ever": jnp.zeros(shape, bool)}
    if ucfg.masking:
        state.update({"window": jnp.zeros(shape, bool), "unit_mask": jnp.ones(shape, jnp.float32)})
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


def update_mask(units: dict[str, Array], used_LxF: Array, step_after: Array, rng: Array, at_step: int,
                window: int, random: bool) -> tuple[dict[str, Array], dict[str, Array]]:
    """Folds one step's used units into the window; at `step_after` == at_step fixes the
    mask. Returns ({window, unit_mask}, {masked_fraction: (L,)})."""
    in_window = step_after > at_step - window
    window_LxF = jnp.where(in_window, units["window"] | used_LxF, jnp.zeros_like(used_LxF))
    keep_LxF = window_LxF
    if random:
        keep_LxF = _random_keep(keep_LxF, jax.random.fold_in(jax.random.wrap_key_data(rng), at_step))
    mask_LxF = jnp.where(step_after == at_step, keep_LxF.astype(jnp.float32), units["unit_mask"])
    return {"window": window_LxF, "unit_mask": mask_LxF}, {names.MASKED_FRACTION: 1.0 - jnp.mean(mask_LxF, axis=-1)}


def update_units(units: dict[str, Array], used_LxF: Array, step_after: Array, rng: Array,
                 ucfg: UnitConfig) -> tuple[dict[str, Array], dict[str, Array]]:
    """Folds one step's used units into the state; returns (units, per-layer stats)."""
    first = init_unit_tracking(used_LxF)
    tracked = {"first": units["first"], "ever": units["ever"]}
    tracked = jax.tree.map(lambda a, b: jnp.where(step_after == 1, a, b), first, tracked)
    tracked, stats = unit_tracking_update(tracked, used_LxF)
    new = dict(units, **tracked)
    if ucfg.masking:
        masking, mask_stats_ = update_mask(units, used_LxF, step_after, rng, ucfg.mask_at_step, ucfg.mask_window,
                                           ucfg.mask_random)
        new.update(masking)
        stats.update(mask_stats_)
    return new, stats


def mask_stats(mask_LxBxTxF: Array, token_mask_BxT: Array, ucfg: UnitConfig,
               detailed: bool = False) -> dict[str, Array]:
    """One pass over the recorded mask: the activation ratio (L,) (mean over real tokens of
    the used fraction of F), the batch's `used` units (L, F) and, when `detailed`, the
    per-layer use fractions and percentiles (logged names) under `detailed`."""
    count_LxBxF, length_B = sequence_unit_counts(mask_LxBxTxF, token_mask_BxT)
    use = use_from_counts(count_LxBxF, length_B, batch_groups=ucfg.batch_groups)
    out = {names.ACTIVATION_RATIO: use["per_token"], "used": used_from_counts(count_LxBxF)}
    if detailed:  # unused outputs are dropped by XLA
        pct = percentiles_from_counts(count_LxBxF, length_B, ucfg.percentiles)
        stats = {names.USE_NAMES[k]: v for k, v in use.items()}
        stats[names.SEQ_USE_PERCENTILE] = {str(p): v for p, v in pct.items()}
        out["detailed"] = stats
    return out

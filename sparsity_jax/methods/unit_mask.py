"""Dead-unit masking (W&A §4.1): at the end of step S = `unit_mask.at_step` the units unused
over the last `unit_mask.window` batches (S − window + 1 … S) get mask 0 for every later
step, forward and gradient (the FFN's `unit_mask`); `unit_mask.random` masks a random
set of the same size per layer instead (the paper's control). The window and the mask
are train state (`units`), so they are checkpointed; the rule runs inside the train step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsity_jax.methods.base import Dense
from sparsity_jax.runtime import names

Array = jax.Array


def init_mask(shape: tuple[int, int]) -> dict[str, Array]:
    """The masking state of (L, F) units: the window's used set and the mask (all 1)."""
    return {"window": jnp.zeros(shape, bool), "unit_mask": jnp.ones(shape, jnp.float32)}


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


class DeadUnitMasking(Dense):
    """Dense training with dead-unit masking: evaluated with the mask (`run.sparsify`)."""

    name = "unit_mask"

    def meta(self) -> dict:
        u = self.run.settings.unit_mask
        return {"method": self.name, "at_step": u.at_step, "window": u.window, "random": u.random}

"""optax AdamW with global-norm clipping and the learning-rate schedules the papers use.

Schedules (all peak at `lr` after `warmup_steps` of linear warm-up):
  constant  flat after warm-up.
  cosine    cosine decay to lr·min_lr_ratio at `total_steps`.
  wsd       warm-up / stable / decay (MiniCPM, used by Sparsing Law App. F): flat until
            the last `decay_fraction` of training, then exponential-like decay to
            lr·min_lr_ratio (linear in log space).
  noam      lr · min(step/warmup, sqrt(warmup/step)) (SSD App. A; "Attention is all you need").
Weight decay applies to matrices only (ndim ≥ 2), not to norm scales.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sparsity_jax.settings import OptimizerSettings


def make_schedule(cfg: OptimizerSettings, total_steps: int) -> optax.Schedule:
    """The learning rate per step of `cfg.schedule` (names checked by the settings)."""
    lr, warm = cfg.lr, max(int(cfg.warmup_steps), 0)
    floor = lr * cfg.min_lr_ratio
    if cfg.schedule == "noam":
        w = max(warm, 1)
        return lambda step: lr * jnp.minimum((step + 1) / w, jnp.sqrt(w / (step + 1.0)))
    warmup = optax.linear_schedule(0.0 if warm else lr, lr, max(warm, 1))
    rest = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, rest, alpha=cfg.min_lr_ratio)
    else:  # wsd
        decay = max(int(rest * cfg.decay_fraction), 1)
        stable = rest - decay

        def after(step):
            frac = jnp.clip((step - stable) / decay, 0.0, 1.0)
            return lr * jnp.exp(frac * jnp.log(max(floor, 1e-12) / lr))

    return optax.join_schedules([warmup, after], [warm])


def make_optimizer(cfg: OptimizerSettings, total_steps: int) -> optax.GradientTransformation:
    """AdamW(β1, β2, ε, weight_decay) after clip_by_global_norm(clip_norm) (0 = no clip)."""
    schedule = make_schedule(cfg, total_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)

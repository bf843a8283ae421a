"""Sparsing Law §5 (Fig. 6–7) at laptop scale: ReLU LMs of one non-embedding size
(≈ 0.59M parameters, F = 2.5·d as in App. F) and width-depth ratios d/L from 4 to 256.
`:d64_l16` | `:d96_l7` | `:d128_l4` | `:d176_l2` | `:d256_l1`; non-embedding parameters
9·d²·L = 589,824 · (1, 0.98, 1, 0.95, 1). 300 steps of 32 × 128 tokens each.

    sparsity-jax compare --config configs/sparsing_law/width_depth.py --workdir runs/width_depth
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402

SHAPES = {"d64_l16": (64, 16), "d96_l7": (96, 7), "d128_l4": (128, 4), "d176_l2": (176, 2), "d256_l1": (256, 1)}
VARIANTS = tuple(SHAPES)


def get_config(variant: str = "d128_l4"):
    if variant not in SHAPES:
        raise ValueError(f"unknown variant {variant!r}; pick one of {', '.join(VARIANTS)}")
    d, layers = SHAPES[variant]
    c = base()
    c.model.update(dict(d_model=d, num_layers=layers, num_heads=4, d_ff=5 * d // 2, activation="relu"))
    c.train.update(dict(steps=300, global_batch_size=32, seq_len=128, log_every=50, eval_every=300,
                        checkpoint_every=100, keep_checkpoints=3, eval_batches=8, metrics_every=0, record="none"))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=30, min_lr_ratio=0.1))
    return c

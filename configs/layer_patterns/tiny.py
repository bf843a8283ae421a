"""Layer-patterns experiment at laptop scale: a 6-layer ReLU LM on `local_code` with
hidden-unit metrics every 20 steps (≤ 15 minutes on 2 CPU cores). Then:

    sparsity-jax train --config configs/layer_patterns/tiny.py --workdir runs/lp_tiny
    sparsity-jax report --workdir runs/lp_tiny        # tables + PNGs in runs/lp_tiny/report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402


def get_config():
    c = base()
    c.model.update(dict(d_model=128, num_layers=6, num_heads=4, d_ff=1024, activation="relu",
                        mlp_init="lecun_normal", tie_embeddings=False))
    c.train.update(dict(steps=600, global_batch_size=32, seq_len=128, log_every=50, eval_every=200,
                        checkpoint_every=200, metrics_every=20, metrics_batch_groups=-1))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=50, min_lr_ratio=0.0))
    return c

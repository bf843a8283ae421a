"""SSD at laptop scale on `local_code`: `:ssd` (default) or `:dense` for the baseline.
N = 32 experts of 32 neurons, K = 6 (the paper's K/N), monitoring every 40 steps.

    sparsity-jax train --config configs/ssd/tiny.py:ssd   --workdir runs/ssd_tiny
    sparsity-jax train --config configs/ssd/tiny.py:dense --workdir runs/ssd_tiny_dense
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402


def get_config(variant: str = "ssd"):
    if variant not in ("ssd", "dense"):
        raise ValueError(f"variant must be ssd or dense, got {variant!r}")
    c = base()
    c.model.update(dict(d_model=128, num_layers=4, num_heads=4, d_ff=1024, activation="relu"))
    c.train.update(dict(steps=600, global_batch_size=32, seq_len=128, log_every=50, eval_every=50,
                        checkpoint_every=200, metrics_every=0, record="none"))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=50))
    c.ssd.update(dict(enabled=variant == "ssd", num_experts=32, top_k=6, monitor_every=40, ari_threshold=0.9,
                      sparse_share=0.5, final_dense_share=0.1))
    return c

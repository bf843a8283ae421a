"""Sparsing Law 0.1B (App. F, Table 2): MiniCPM-style, F/d = 2.5, tied embeddings, WSD,
lr 0.01, β = (0.9, 0.95), weight decay 0.1, d/L ≈ 48–56. `:relu` (default) or `:silu`.

    sparsity-jax train --config configs/sparsing_law/0p1b.py:silu --workdir runs/sl_0p1b_silu
The paper trains on its own corpus; set data.task=c4_en (and data.spm_path) for real runs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402


def get_config(activation: str = "relu"):
    if activation not in ("relu", "silu"):
        raise ValueError(f"activation must be relu or silu, got {activation!r}")
    c = base()
    c.model.update(dict(d_model=768, num_layers=14, num_heads=12, d_ff=1920, activation=activation,
                        tie_embeddings=True, dtype="bfloat16"))
    c.data.update(dict(task="c4_en", vocab="sentencepiece"))
    c.train.update(dict(steps=100_000, global_batch_size=512, seq_len=1024, log_every=100, eval_every=2000,
                        checkpoint_every=2000, keep_checkpoints=20))
    c.optimizer.update(dict(lr=0.01, b1=0.9, b2=0.95, weight_decay=0.1, schedule="wsd", warmup_steps=2000,
                            decay_fraction=0.1, min_lr_ratio=0.01))
    return c

"""Layer-dependent ReLU sparsity (W&A §2, App. A): a 6-layer decoder, F = 32768, ReLU,
LeCun-normal MLP init, C4, AdamW with 5000 warm-up steps to 3e-3 then cosine, batch of
16 × 512 tokens per device.

    sparsity-jax train --config configs/layer_patterns/paper.py --workdir runs/wa_paper
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402


def get_config():
    c = base()
    c.model.update(dict(d_model=1024, num_layers=6, num_heads=16, d_ff=32768, activation="relu",
                        mlp_init="lecun_normal", tie_embeddings=False, dtype="bfloat16"))
    c.data.update(dict(task="c4_en", vocab="sentencepiece"))
    c.train.update(dict(steps=1_000_000, global_batch_size=16 * 8, seq_len=512, log_every=500,
                        eval_every=10_000, checkpoint_every=10_000, keep_checkpoints=10))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=5000, weight_decay=0.1, min_lr_ratio=0.0))
    return c

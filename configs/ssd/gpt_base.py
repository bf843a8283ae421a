"""SSD GPT-base (SSD §5, App. A): 12 layers, d = 768, 12 heads, F = 6144, ReLU, no bias,
batch 512, Adam with the Noam schedule (2000 warm-up steps), and SSD's switching
settings: N = 32 experts, K = 6, τ = 0.9, monitoring every M = 3000 steps, sparse share
r = 0.5, final dense share l = 0.1. Baselines (App. A): `:dense`; `:smoe` N = 3, K = 2;
`:moe_dropout` N = 32, K grows 6 → 32; `:pld` layer-drop rate 0 → 0.25 (γ = 0.001/step,
our choice for "quickly at the beginning").

    sparsity-jax train --config configs/ssd/gpt_base.py --workdir runs/ssd_gpt_base
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402

VARIANTS = {
    "ssd": dict(name="ssd"),
    "dense": dict(name="dense"),
    "smoe": dict(name="smoe", num_experts=3, top_k=2),
    "moe_dropout": dict(name="moe_dropout"),
    "pld": dict(name="pld", pld_drop_rate=0.25, pld_gamma=0.001),
}


def get_config(variant: str = "ssd"):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    c = base()
    c.model.update(dict(d_model=768, num_layers=12, num_heads=12, d_ff=6144, activation="relu",
                        tie_embeddings=False, dtype="bfloat16"))
    c.data.update(dict(task="c4_en", vocab="sentencepiece"))
    c.train.update(dict(steps=200_000, global_batch_size=512, seq_len=512, log_every=100, eval_every=3000,
                        checkpoint_every=3000, keep_checkpoints=10))
    if variant == "pld":
        c.train.update(dict(record="none", metrics_every=0))
    c.optimizer.update(dict(lr=1e-3, schedule="noam", warmup_steps=2000, weight_decay=0.0, b2=0.98))
    c.method.update(dict(num_experts=32, top_k=6, monitor_every=3000, ari_threshold=0.9,
                         sparse_share=0.5, final_dense_share=0.1))
    c.method.update(VARIANTS[variant])
    return c

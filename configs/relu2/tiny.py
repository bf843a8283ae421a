"""ReLU² Wins at laptop scale: four tiny byte-level LMs on `local_code`, one per
activation, parameter-matched as in App. A.3 (gated F = 0.65625 × non-gated F, the
5376 / 8192 ratio of configs/relu2/1p3b.py). `:relu` | `:relu2` | `:silu` | `:swiglu`.
Each is the default model's shape, 300 steps of 32 × 128 tokens: ≈ 2 min at the
README's 359 ms/step on 2 idle CPU cores, 9–10 min each on a loaded shared machine.
The comparison (PPL-1% sparsity and CETT-vs-sparsity curves, ReLU² Fig. 3a / Sparsing
Law Fig. 3) trains and evaluates them:

    sparsity-jax compare --workdir runs/compare
    sparsity-jax train --config configs/relu2/tiny.py:relu2 --workdir runs/relu2_tiny   # one alone
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402

ACTIVATIONS = VARIANTS = ("relu", "relu2", "silu", "swiglu")
D_FF = 512  # non-gated width; gated: D_FF * 5376 // 8192 = 336


def get_config(activation: str = "relu2"):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; pick one of {', '.join(ACTIVATIONS)}")
    c = base()
    c.model.update(dict(d_model=128, num_layers=4, num_heads=4, activation=activation,
                        d_ff=D_FF * 5376 // 8192 if activation == "swiglu" else D_FF))
    c.train.update(dict(steps=300, global_batch_size=32, seq_len=128, log_every=50, eval_every=300,
                        checkpoint_every=100, keep_checkpoints=3, eval_batches=8, metrics_every=0, record="none"))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=30, min_lr_ratio=0.1))
    return c

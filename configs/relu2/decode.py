"""Sparse-decoding models (issue 22): byte-level LMs on `local_code` with F = 4096, wide
enough that the FFN dominates a decode step, small enough to train on one CPU
core in ≈ 5 min each when idle (relu2: 2,500–4,000 tokens/s, ≈ 8 min; on a machine
loaded 4× over, 30+ min). `:relu` | `:relu2` | `:swiglu` (parameter-matched as in
configs/relu2/tiny.py: gated F = 4096 × 5376 / 8192 = 2688 would fall under 4096, so the
gated variant keeps F = 4096 and has 1.5× the FFN parameters; same F = same layout
problem, which is what the layout table compares).
d 256, 2 layers, 600 steps of 16 × 128 tokens. bench/sparse_decode.py --workdir uses
them at their PPL-1% CETT (`sparsity-jax ppl` first):

    sparsity-jax train --config configs/relu2/decode.py:relu2 --workdir workdirs/decode_relu2
    sparsity-jax ppl --workdir workdirs/decode_relu2 --ppl-p 1 --topk 2048 --fat-eps 0.1
    sparsity-jax predictor --workdir workdirs/decode_relu2 --cett C   # C: its PPL-1% CETT
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402

ACTIVATIONS = VARIANTS = ("relu", "relu2", "swiglu")
D_FF = 4096


def get_config(activation: str = "relu2"):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; pick one of {', '.join(ACTIVATIONS)}")
    c = base()
    c.model.update(dict(d_model=256, num_layers=2, num_heads=4, activation=activation, d_ff=D_FF))
    c.train.update(dict(steps=600, global_batch_size=16, seq_len=128, log_every=100, eval_every=600,
                        checkpoint_every=600, keep_checkpoints=1, eval_batches=8, metrics_every=0, record="none"))
    c.optimizer.update(dict(lr=3e-3, schedule="cosine", warmup_steps=50, min_lr_ratio=0.1))
    return c

"""ReLU² Wins 1.3B models in four activations, parameter-matched (App. A.3): non-gated
F = 8192 vs gated F = 5376 at d = 2048. `:relu` | `:relu2` | `:silu` | `:swiglu` (also
`:reglu`, `:gelu`, `:geglu`).

    sparsity-jax train --config configs/relu2/1p3b.py:relu2 --workdir runs/relu2_1p3b
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from default import get_config as base  # noqa: E402

GATED = ("swiglu", "reglu", "geglu")


def get_config(activation: str = "relu2"):
    if activation not in ("relu", "relu2", "silu", "gelu") + GATED:
        raise ValueError(f"unknown activation {activation!r}")
    c = base()
    c.model.update(dict(d_model=2048, num_layers=24, num_heads=16, activation=activation,
                        d_ff=5376 if activation in GATED else 8192, dtype="bfloat16",
                        scan_layers=True, remat="full"))
    c.data.update(dict(task="c4_en", vocab="sentencepiece"))
    c.train.update(dict(steps=100_000, global_batch_size=1024, seq_len=2048, grad_accum=16, log_every=100, eval_every=2000,
                        checkpoint_every=2000, keep_checkpoints=10))
    c.optimizer.update(dict(lr=3e-4, schedule="cosine", warmup_steps=2000, weight_decay=0.1))
    # FSDP over the whole slice: 1.3B parameters with Adam's moments need ~21 GB, more than
    # a v5e chip's 16 GiB unsharded (`train --dry-run --tune --topology v5p-8` checks a slice)
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    return c

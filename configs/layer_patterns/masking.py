"""Dead-unit masking vs a random mask of the same size (layer-patterns §4.1), small scale:
`:dead` masks the units unused in the 5 batches before step 150; `:random` masks as many
random units per layer. Compare the two loss curves:

    sparsity-jax train --config configs/layer_patterns/masking.py:dead   --workdir runs/mask_dead
    sparsity-jax train --config configs/layer_patterns/masking.py:random --workdir runs/mask_random
    sparsity-jax report --workdir runs/mask_dead --compare runs/mask_random
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import get_config as tiny  # noqa: E402


def get_config(kind: str = "dead"):
    if kind not in ("dead", "random"):
        raise ValueError(f"kind must be dead or random, got {kind!r}")
    c = tiny()
    c.train.update(dict(steps=400, metrics_every=25))
    c.unit_mask.update(dict(at_step=150, window=5, random=kind == "random"))
    return c

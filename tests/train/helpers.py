"""Shared helpers for trainer tests: a tiny config and synthetic packed batches."""
import numpy as np

from sparsity_jax.settings import load

TINY = {
    "model.d_model": "32", "model.num_layers": "2", "model.num_heads": "2", "model.d_ff": "64",
    "train.seq_len": "32", "train.global_batch_size": "16", "train.steps": "12", "train.log_every": "1",
    "train.eval_batches": "2", "train.eval_every": "1000", "data.max_files": "200",
}


def tiny_config(**overrides):
    """Settings of the default config shrunk by TINY, with `overrides` ("a.b": value) on top."""
    return load("configs/default.py", {**TINY, **{k: str(v) for k, v in overrides.items()}})


def synthetic_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int) -> dict:
    """Two packed segments per row with a padded tail, like the real pipeline's output."""
    targets = rng.integers(1, vocab, (batch, seq_len)).astype(np.int32)
    seg = np.ones((batch, seq_len), np.int32)
    cut, end = seq_len // 3, seq_len - 4
    seg[:, cut:end] = 2
    seg[:, end:] = 0
    pos = np.zeros_like(seg)
    for s in (1, 2):
        pos += np.where(seg == s, np.cumsum(seg == s, axis=1) - 1, 0).astype(np.int32)
    inputs = np.where(pos == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
    targets = np.where(seg == 0, 0, targets)
    return {"inputs": inputs * (seg > 0), "targets": targets, "segment_ids": seg, "positions": pos,
            "loss_weights": (seg > 0).astype(np.float32)}


def read_losses(path: str) -> dict[int, float]:
    """Last logged training loss of every step in a metrics.jsonl."""
    import json

    losses = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["split"] == "train":
                losses[rec["step"]] = rec["loss"]
    return losses

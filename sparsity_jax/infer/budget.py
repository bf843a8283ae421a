"""Neuron budgets of the sparse decode FFN, sized from measured candidate sets.

Static shapes need a fixed number K of neurons per decode step. A step computes the
UNION of its rows' candidates (batch > 1), and on a tensor-sharded FFN each shard its
own part with its own K. `union_counts` draws groups of `rows` distinct real tokens (a
decode step's rows come from different sequences) and counts each group's union per
shard, keeping the fullest shard; `budgets_for` turns the counts into a few ascending
budgets: each of `quantiles` of the counts times (1 + margin), rounded up to `align`.
A budget that is not below the shard's F is dropped: that step is cheaper dense. The
default quantiles (0.5, 0.99) give a tight budget for the typical step and a loose one
for the tail; only steps beyond the last budget run the dense form, and are counted.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

QUANTILES = (0.5, 0.99)


def union_counts(cand_NxF: np.ndarray, rows: int, shards: int = 1, groups: int = 256, seed: int = 0,
                 block: int = 0) -> np.ndarray:
    """(groups,) the largest per-shard count of the union of `rows` random distinct tokens'
    candidates; with `block`, the neurons of the blocks of b that the union touches."""
    if block:
        n, f = cand_NxF.shape
        cand_NxF = np.repeat(cand_NxF.reshape(n, f // block, block).any(-1), block, axis=1)
    n, f = cand_NxF.shape
    if f % shards:
        raise ValueError(f"{shards} shards do not divide F={f}")
    rng = np.random.default_rng(seed)
    idx_GxR = np.stack([rng.choice(n, rows, replace=n < rows) for _ in range(groups)])
    union_GxF = np.zeros((groups, f), bool)
    for r in range(rows):
        union_GxF |= cand_NxF[idx_GxR[:, r]]
    return union_GxF.reshape(groups, shards, f // shards).sum(-1).max(-1)


def budgets_for(counts: np.ndarray, f_local: int, quantiles: Sequence[float] = QUANTILES, margin: float = 0.1,
                align: int = 32) -> tuple[int, ...]:
    """Ascending budgets < f_local: ceil(quantile(counts, q) · (1 + margin)) rounded up to `align`."""
    ks = {max(align, int(np.ceil(np.quantile(counts, q) * (1 + margin) / align)) * align) for q in quantiles}
    return tuple(sorted(k for k in ks if k < f_local))


def measured_candidates(decoder, batches, max_tokens: int = 8192) -> list[np.ndarray]:
    """Per layer, the decoder's candidates (N, F) bool of up to `max_tokens` real tokens of `batches`."""
    per_layer: list[list[np.ndarray]] = []
    n = 0
    for batch in batches:
        _, cand_LxBxTxF = decoder.candidates(batch, logits=False)  # the (B, T, V) logits never made
        real_M = np.asarray(jax.device_get(batch["loss_weights"])).reshape(-1) > 0
        cand = np.asarray(jax.device_get(cand_LxBxTxF))
        cand = cand.reshape(cand.shape[0], -1, cand.shape[-1])[:, real_M][:, : max_tokens - n]
        per_layer = per_layer or [[] for _ in range(cand.shape[0])]
        for layer, c in zip(per_layer, cand):
            layer.append(c)
        n += cand.shape[1]
        if n >= max_tokens:
            break
    if n == 0:
        raise ValueError("no real token in the calibration batches")
    return [np.concatenate(c) for c in per_layer]


def calibrate(decoder, batches, rows: int, *, quantiles: Sequence[float] = QUANTILES, margin: float = 0.1,
              align: int = 32, max_tokens: int = 8192, seed: int = 0) -> tuple[tuple[int, ...], ...]:
    """Per-layer budgets of `decoder` (its sparsity mode and shards) for steps of `rows` rows."""
    f_local = decoder.cfg.d_ff // decoder.shards
    block = getattr(decoder, "block", 0)
    align = int(np.lcm(align, block)) if block else align
    return tuple(budgets_for(union_counts(c, rows, decoder.shards, seed=seed, block=block), f_local, quantiles,
                             margin, align)
                 for c in measured_candidates(decoder, batches, max_tokens))

"""Co-activation neuron order: a function-preserving permutation of each FFN's F
axis that stores neurons which fire together in contiguous blocks of b (issue 22).

ReLU² Wins §4 (3) measures hardware affinity (reuse, co-activation) without turning it
into a neuron order; here it becomes one. For each layer the neurons' activation patterns
on calibration tokens (one boolean vector over M tokens per neuron: the decoder's
candidates, i.e. what sparse decoding reads) are clustered by balanced k-means into F/b
groups of exactly b (`ssd.kmeans.balanced_kmeans`, rows L2-normalised, so the distance
is 2 − 2·cosine of the patterns: co-activation); the permutation lists group 0, then
group 1, … . The FFN is f(x) = Σ_i a_i(x) W_out[i], a sum over neurons, so permuting
W_in / W_gate columns, W_out rows and every per-neuron array (the predictor's W2
columns and bias) together leaves it unchanged (`permute_params`, `permute_sparsify`).

`block_shares` is the number a block-gather kernel pays for: the neuron-active share and
the block-active share (a block counts if any of its neurons is active) per token.
"""
from __future__ import annotations

import copy
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.ssd.kmeans import balanced_kmeans, permutation_from_labels

SIZES = (8, 16, 32, 64, 128)


def block_shares(active_MxF: np.ndarray, sizes: Sequence[int] = SIZES) -> tuple[float, dict[int, float]]:
    """(neuron-active share, {b: block-active share}) of M tokens' boolean masks, means over tokens."""
    active = np.asarray(active_MxF, bool)
    m, f = active.shape
    return float(active.mean()), {b: float(active.reshape(m, f // b, b).any(-1).mean()) for b in sizes if f % b == 0}


def coactivation_permutation(active_MxF: np.ndarray, block: int, *, seed: int = 0, n_iter: int = 30) -> np.ndarray:
    """(F,) permutation placing co-active neurons in blocks of `block` (balanced k-means of
    the neurons' activation patterns into F/b groups of exactly b)."""
    active = np.asarray(active_MxF, bool)
    f = active.shape[1]
    if block < 1 or f % block:
        raise ValueError(f"block {block} must divide F={f}")
    labels_F, _, _ = balanced_kmeans(jnp.asarray(active.T, jnp.float32), f // block, key=jax.random.key(seed),
                                     n_iter=n_iter)
    return np.asarray(permutation_from_labels(labels_F, f // block))


def coactivation_order(active_per_layer: Sequence[np.ndarray], block: int, *, seed: int = 0,
                        n_iter: int = 30) -> list[np.ndarray]:
    """One permutation per layer (`coactivation_permutation`)."""
    return [coactivation_permutation(a, block, seed=seed + i, n_iter=n_iter) for i, a in enumerate(active_per_layer)]


def _take(x, perm: np.ndarray, axis: int):
    out = jnp.take(x, jnp.asarray(perm), axis=axis)
    sharding = getattr(x, "sharding", None)
    return jax.device_put(out, sharding) if sharding is not None else out


def permute_params(params: dict, perms: Sequence[np.ndarray]) -> dict:
    """The LM's pure param dict with layer i's F axis permuted by perms[i] (W_in, W_gate
    columns; W_out rows). The function is unchanged. A scanned model's blocks (one block
    stacked on a leading layers axis, `model.scan_layers`) are permuted layer by layer."""
    out = copy.copy(params)
    if "ffn" in params["blocks"]:  # stacked: (L, d, F) / (L, F, d)
        ffn = dict(params["blocks"]["ffn"])
        for name, axis in (("w_in", 1), ("w_gate", 1), ("w_out", 0)):
            if name in ffn:
                stacked = jnp.stack([jnp.take(ffn[name][i], jnp.asarray(p), axis=axis) for i, p in enumerate(perms)])
                sharding = getattr(ffn[name], "sharding", None)
                ffn[name] = jax.device_put(stacked, sharding) if sharding is not None else stacked
        out["blocks"] = {**params["blocks"], "ffn": ffn}
        return out
    out["blocks"] = copy.copy(params["blocks"])
    for i, perm in enumerate(perms):
        ffn = dict(params["blocks"][i]["ffn"])
        for name in ("w_in", "w_gate"):
            if name in ffn:
                ffn[name] = _take(ffn[name], perm, 1)
        ffn["w_out"] = _take(ffn["w_out"], perm, 0)
        out["blocks"][i] = {**params["blocks"][i], "ffn": ffn}
    return out


def permute_sparsify(sp, perms: Sequence[np.ndarray]):
    """A decoder's `Sparsify` (`infer.gathered.decode_sparsify`: arrays stacked (L, ...)) with
    every per-neuron axis permuted: the predictor's W2 (L, r, F) columns and bias b (L, F);
    per-layer scalars (thresholds) unchanged."""
    pr = sp.predictor
    if pr is None:
        return sp

    def take(w, axis):
        return None if w is None else jnp.stack([jnp.take(jnp.asarray(w[i]), jnp.asarray(p), axis=axis)
                                                 for i, p in enumerate(perms)])

    return sp.replace(predictor=pr.replace(w2=take(pr.w2, 1), b=take(pr.b, 0)))


def affinity_table(active_per_layer: Sequence[np.ndarray], sizes: Sequence[int] = SIZES, *, seed: int = 0,
                   n_iter: int = 30) -> list[dict]:
    """Per layer: neuron share, block shares before, and after an order computed at each b."""
    rows = []
    for i, active in enumerate(active_per_layer):
        neuron, before = block_shares(active, sizes)
        after = {}
        for b in before:
            perm = coactivation_permutation(active, b, seed=seed + i, n_iter=n_iter)
            after[b] = block_shares(active[:, perm], (b,))[1][b]
        rows.append({"layer": i, "neuron": neuron, "before": before, "after": after})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of `affinity_table` and their mean as text (block share / neuron share in brackets)."""
    sizes = list(rows[0]["before"])
    head = f"{'layer':>5s} {'neuron':>7s} " + " ".join(f"{f'b={b} before':>12s} {f'b={b} after':>11s}" for b in sizes)
    lines = [head]
    mean = {"layer": "mean", "neuron": np.mean([r["neuron"] for r in rows]),
            "before": {b: np.mean([r["before"][b] for r in rows]) for b in sizes},
            "after": {b: np.mean([r["after"][b] for r in rows]) for b in sizes}}
    for r in rows + [mean]:
        lines.append(f"{str(r['layer']):>5s} {r['neuron']:7.4f} " + " ".join(
            f"{r['before'][b]:12.4f} {r['after'][b]:11.4f}" for b in sizes))
    return "\n".join(lines)

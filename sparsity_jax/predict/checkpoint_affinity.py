"""Hardware affinity of a checkpoint's activation pattern (ReLU² Wins §4 (3), §5.3, App. D):
with neurons active where ‖n_i‖ ≥ t_l > 0 on validation batches, the reuse ratio of a sliding
window of w previous tokens of the same sequence against each layer's activation ratio
(Fig. 6), the top-average co-activation gap per layer (Fig. 7) and the hot-neuron CDF.
`report.predictivity` renders the result."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from sparsity_jax.metrics import coactivation, coactivation_gap, hot_neuron_cdf, neuron_frequency, reuse_ratio
from sparsity_jax.predict.data import record_active
from sparsity_jax.runtime.trained import real_tokens

MAX_NEURONS = 4096  # co-activation on more neurons than this uses a fixed random subsample by default


@dataclasses.dataclass
class Affinity:
    """Per-layer affinity measurements (lists of length L unless stated)."""

    windows: list[int]
    validation_tokens: int
    activation_ratio: list[float]
    reuse_ratio: dict[str, list[float]]  # window (as text) → per layer
    coactivation_gap: list[float]
    coactivation_neurons: int
    coactivation_subsampled: bool
    hot_neuron_share: dict[str, list[float]]  # top_10pct / top_20pct / top_50pct → per layer
    hot_neuron_cdf: list[list[float]]  # (L, F)
    step: int | None = None
    target_cett: float | None = None
    thresholds: list[float] | None = None
    realised_cett: list[float] | None = None
    workdir: str | None = None

    def to_json(self, cdf: bool = True) -> dict:
        """JSON-able dict (without the unset checkpoint fields; `cdf=False`: without the (L, F) CDF)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if not cdf:
            out.pop("hot_neuron_cdf")
        return out


def affinity_of(graphdef, params, batches, threshold_L, windows: Sequence[int], neurons: int | None = None) -> Affinity:
    """Reuse ratios, activation ratios, co-activation gaps and the hot-neuron CDF of the
    neurons active at `threshold_L` on the real tokens of `batches`.

    The masks of all batches are concatenated along the batch axis (L·N·F bytes on the
    devices for N token positions), keeping each row's sequences and segment ids, so the
    reuse windows never cross a sequence or padding. `neurons`: co-activation on a fixed
    random subsample (None: all, at most MAX_NEURONS)."""
    t_L = jnp.asarray(threshold_L, jnp.float32)
    masks = [record_active(graphdef, params, b, t_L, False)[1] for b in batches]
    mask_LxBxTxF = jnp.concatenate(masks, axis=1)
    real_BxT = jnp.concatenate([b["loss_weights"] > 0 for b in batches], axis=0)
    seg_BxT = jnp.concatenate([b["segment_ids"] for b in batches], axis=0)
    d_ff = mask_LxBxTxF.shape[-1]
    n = neurons if neurons is not None else (None if d_ff <= MAX_NEURONS else MAX_NEURONS)
    reuse = reuse_ratio(mask_LxBxTxF, tuple(windows), real_BxT, segment_ids=seg_BxT)
    co = coactivation(mask_LxBxTxF, real_BxT, neurons=n)
    cdf_LxF = np.asarray(hot_neuron_cdf(neuron_frequency(mask_LxBxTxF, real_BxT)))
    top = {f"top_{q}pct": cdf_LxF[:, max(1, int(round(d_ff * q / 100))) - 1].round(6).tolist() for q in (10, 20, 50)}
    return Affinity(
        windows=list(windows), validation_tokens=real_tokens(batches),
        activation_ratio=np.asarray(reuse.activation_ratio).round(6).tolist(),
        reuse_ratio={str(w): np.asarray(reuse.reuse[j]).round(6).tolist() for j, w in enumerate(windows)},
        coactivation_gap=np.asarray(coactivation_gap(co.matrix)).round(6).tolist(),
        coactivation_neurons=int(co.neurons.shape[0]), coactivation_subsampled=n is not None and n < d_ff,
        hot_neuron_share=top, hot_neuron_cdf=cdf_LxF.round(5).tolist())

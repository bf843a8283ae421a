"""How an FFN drops neurons: the `Sparsify` settings, the keep rules and `MoESpec`.

Each rule is defined once here and used by the FFN (`nn/ffn.py`), the metrics
(`metrics/baselines.py`, the CETT search), the predictor labels and decoding. The neuron
magnitude ‖n_i‖ = |a_i|·‖W_out,i‖ is `magnitudes(a, out_norms(w_out))`. Rules return the
mask of KEPT (active) neurons, bool with the shape of their input (…, F):
  threshold  ‖n_i‖ ≥ t (`threshold_keep`; ReLU² Wins §3, Sparsing Law Eq. 3); a neuron
             is ACTIVE at t when kept and ‖n_i‖ > 0 (`active_at`: t = 0 means a ≠ 0);
  top-k      the k largest |s_i| per token, exactly k, ties broken by the lower index
             (Sparsing Law §4.1, on the gate score s);
  FAT-ε      |s_i| ≥ ε (Sparsing Law §4.1);
  predicted  a low-rank predictor's score σ(W2·(W1·x) + b) > 0.5, or its k highest
             scores per token (ReLU² §4 (2), §5.2, App. A.2; `predictor_scores`,
             `score_keep`, `PredictorSpec`: the FFN's predicted mode, the gathered
             decode FFN (`infer.gathered`), the predictor metrics and training use them).
Decoding takes the same `Sparsify` (`infer.Decoder`) and gathers what its mode keeps.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

MODES = ("dense", "threshold", "topk", "fat", "unit_mask", "moe", "predicted")
PREDICT_STRATEGIES = ("threshold", "topk")
SCORE_THRESHOLD = 0.5  # ReLU² App. A.2: a neuron is predicted active when its score is above 0.5


def out_norms(w_out: Array) -> Array:
    """‖W_out,i‖₂ of every neuron i: (…, F) float32 from an output kernel (…, F, d)."""
    return jnp.linalg.norm(jnp.asarray(w_out).astype(jnp.float32), axis=-1)


def magnitudes(a: Array, out_norm: Array) -> Array:
    """Neuron magnitudes ‖n_i‖ = |a_i|·‖W_out,i‖₂ (ReLU² Wins §3) in float32, the shape of
    the activation scores `a` (…, F); `out_norm` from `out_norms`, broadcast against a.
    The one definition: the FFN, the CETT search, the predictor labels and decoding use it."""
    return jnp.abs(a).astype(jnp.float32) * out_norm


def threshold_keep(mag: Array, threshold: Array | float) -> Array:
    """Neurons KEPT (computed) at threshold t: ‖n_i‖ ≥ t, the complement of the paper's
    inactive set D_t = {i : ‖n_i‖ < t} (ReLU² Wins §3, Sparsing Law Eq. 3). The FFN's
    threshold mode keeps by it; the CETT search drops the rest (`metrics.cett`)."""
    return mag >= threshold


def active_at(mag: Array, threshold: Array | float) -> Array:
    """Neurons ACTIVE at threshold t: kept (‖n_i‖ ≥ t, `threshold_keep`) and ‖n_i‖ > 0.
    The one definition of "active at t": the FFN's recorded mask at a record threshold,
    the predictor labels (`predict.data`), decoding's candidates (`infer.gathered`) and
    the search's candidates (`metrics.threshold_pass`).

    A neuron of magnitude 0 adds nothing to the output, so it is never active: t = 0 then
    means a_i ≠ 0 (the straightforward ReLU sparsity, DejaVu's labels, the hidden-unit
    mask), where ‖n_i‖ ≥ 0 alone would call every neuron active. For t > 0 active and
    kept are the same set, so the labels and masks at a searched threshold are exactly
    the neurons the FFN computes, and no CETT changes (D_t keeps ReLU² §3's definition).
    """
    return threshold_keep(mag, threshold) & (mag > 0)


def kth_largest(x: Array, k: Array) -> Array:
    """The k-th largest of x ≥ 0 along the last axis, keepdims (…, 1); k an int array
    (traced, 1 ≤ k ≤ F). Exact: a bisection over the float bits, which order like the
    non-negative floats they encode, 32 counting passes over F and no sort."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    lo = jnp.zeros(x.shape[:-1] + (1,), jnp.int32)  # count(bits ≥ lo) ≥ k holds
    hi = jnp.full_like(lo, 0x7F800001)  # above +inf: count(bits ≥ hi) < k

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits >= mid, axis=-1, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def topk_keep(s: Array, k: int | Array) -> Array:
    """Exactly the k largest |s| along the last axis; among equal values the lower index
    wins (as `lax.top_k` orders them). Elementwise compares and one cumsum over F, no
    scatter, so it partitions over a sharded F axis. `k` a Python int (checked; `lax.top_k`
    finds the k-th value) or an int array, traced, so one compiled step serves every k
    (`kth_largest`; 0 ≤ k ≤ F is then the caller's to check)."""
    f = s.shape[-1]
    abs_s = jnp.abs(s)
    if isinstance(k, (int, np.integer)):
        if not 0 <= k <= f:
            raise ValueError(f"top-k needs 0 <= k <= F={f}, got k={k}")
        if k == 0:
            return jnp.zeros(s.shape, bool)
        kth_x1 = jax.lax.top_k(abs_s, int(k))[0][..., -1:]
    else:
        kth_x1 = kth_largest(abs_s, jnp.maximum(k, 1))
    above = abs_s > kth_x1
    tie = abs_s == kth_x1
    room_x1 = k - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
    return above | (tie & (jnp.cumsum(tie, axis=-1, dtype=jnp.int32) <= room_x1))


def fat_keep(s: Array, eps: Array | float) -> Array:
    """FAT-ε: neurons with |s| ≥ ε."""
    return jnp.abs(s) >= eps


@struct.dataclass
class MoESpec:
    """MoE settings for `Sparsify(mode="moe", moe=...)`: static options, per-layer centres.

    centres: (L, N, d) for the whole LM (or (N, d) for one layer), non-trained.
    """

    centres: Array
    num_experts: int = struct.field(pytree_node=False, default=32)
    top_k: int = struct.field(pytree_node=False, default=6)
    dispatch: str = struct.field(pytree_node=False, default="capacity")
    capacity_factor: float = struct.field(pytree_node=False, default=1.25)
    drop_share: float = struct.field(pytree_node=False, default=0.0)
    router_grad: bool = struct.field(pytree_node=False, default=True)

    def for_layer(self, i: int) -> "MoESpec":
        """The spec of layer i (centres (L, N, d) → (N, d))."""
        return self.replace(centres=self.centres[i]) if jnp.ndim(self.centres) == 3 else self

    def options(self) -> dict:
        """Keyword arguments of `moe_ffn`."""
        return dict(num_experts=self.num_experts, top_k=self.top_k, dispatch=self.dispatch,
                    capacity_factor=self.capacity_factor, drop_share=self.drop_share,
                    router_grad=self.router_grad)


def predictor_logits(w1_DxR: Array, w2_RxF: Array, b_F: Array | None, x_xD: Array) -> Array:
    """Activation-predictor logits W2·(W1·x) + b, float32 (…, F); the scores are their sigmoid.

    ReLU² App. A.2 (and DejaVu / PowerInfer): a two-layer low-rank network on the FFN
    input x (after the pre-FFN norm); W1 (d, r), W2 (r, F), optional bias b (F,).
    """
    logits_xF = (x_xD.astype(jnp.float32) @ w1_DxR.astype(jnp.float32)) @ w2_RxF.astype(jnp.float32)
    return logits_xF if b_F is None else logits_xF + b_F.astype(jnp.float32)


def predictor_scores(w1_DxR: Array, w2_RxF: Array, b_F: Array | None, x_xD: Array) -> Array:
    """The predictor's scores σ(W2·(W1·x) + b), float32 (…, F) in [0, 1] (`predictor_logits`)."""
    return jax.nn.sigmoid(predictor_logits(w1_DxR, w2_RxF, b_F, x_xD))


def score_keep(scores: Array, strategy: str, k: int = 0) -> Array:
    """Neurons a predictor marks active: "threshold" score > 0.5, "topk" exactly the k
    highest scores per token (ties to the lower index, `topk_keep`; scores are ≥ 0)."""
    if strategy == "threshold":
        return scores > SCORE_THRESHOLD
    if strategy == "topk":
        return topk_keep(scores, k)
    raise ValueError(f"unknown predictor strategy {strategy!r}; choose one of {', '.join(PREDICT_STRATEGIES)}")


@struct.dataclass
class PredictorSpec:
    """Low-rank activation predictors for `Sparsify(mode="predicted", predictor=...)`.

    w1 (L, d, r), w2 (L, r, F), b (L, F) or None for the whole LM (or (d, r), (r, F),
    (F,) for one layer); `strategy` "threshold" (score > 0.5) or "topk" with `k`
    neurons per token (static, so each strategy compiles once).
    """

    w1: Array
    w2: Array
    b: Array | None = None
    strategy: str = struct.field(pytree_node=False, default="threshold")
    k: int = struct.field(pytree_node=False, default=0)

    def for_layer(self, i: int) -> "PredictorSpec":
        """The predictor of layer i (stacked arrays sliced)."""
        if jnp.ndim(self.w1) != 3:
            return self
        return self.replace(w1=self.w1[i], w2=self.w2[i], b=None if self.b is None else self.b[i])

    def scores(self, x_xD: Array) -> Array:
        """σ(W2·(W1·x) + b), float32 (…, F)."""
        return predictor_scores(self.w1, self.w2, self.b, x_xD)

    def keep(self, x_xD: Array) -> Array:
        """Bool (…, F): the neurons predicted active for input x."""
        return score_keep(self.scores(x_xD), self.strategy, self.k)


@struct.dataclass
class Sparsify:
    """How FFNs drop neurons in one forward call.

    `mode` is one mode for all layers or a tuple with one mode per layer. `threshold`
    is a scalar or (L,) array; `unit_mask` is (F,) or (L, F) (0/1 or bool); `k` and `eps`
    serve `topk` and `fat` (arrays, traced: a new k or ε never recompiles).
    `record_threshold` (None, scalar or (L,)) defines the recorded hidden-unit mask for
    activations without exact zeros (None: `a != 0`).
    `moe` serves the moe mode, `predictor` (stacked per layer) the predicted mode.
    """

    mode: str | tuple[str, ...] = struct.field(pytree_node=False, default="dense")
    k: Array | int = 0
    threshold: Array | float = 0.0
    eps: Array | float = 0.0
    unit_mask: Array | None = None
    record_threshold: Array | float | None = None
    moe: MoESpec | None = None
    predictor: PredictorSpec | None = None

    def for_layer(self, i: int, num_layers: int) -> "Sparsify":
        """The settings of layer i (per-layer arrays sliced, per-layer modes picked)."""
        mode = self.mode if isinstance(self.mode, str) else self.mode[i]
        if not isinstance(self.mode, str) and len(self.mode) != num_layers:
            raise ValueError(f"Sparsify.mode has {len(self.mode)} entries for {num_layers} layers")
        pick = lambda v, nd: v[i] if (v is not None and jnp.ndim(v) == nd) else v  # noqa: E731
        return Sparsify(
            mode=mode,
            k=self.k,
            threshold=pick(self.threshold, 1),
            eps=pick(self.eps, 1),
            unit_mask=pick(self.unit_mask, 2),
            record_threshold=pick(self.record_threshold, 1),
            moe=None if self.moe is None else self.moe.for_layer(i),
            predictor=None if self.predictor is None else self.predictor.for_layer(i),
        )


# mode -> keep-mask function (gate score s, magnitudes, settings, FFN input x) -> bool
# (…, F); None keeps all.
KEEP: dict[str, Callable | None] = {
    "dense": None,
    "unit_mask": None,
    "threshold": lambda s, mag, sp, x: threshold_keep(mag, sp.threshold),
    "topk": lambda s, mag, sp, x: topk_keep(s, sp.k),
    "fat": lambda s, mag, sp, x: fat_keep(s, sp.eps),
    "moe": None,  # routed to `moe_ffn` before any keep mask
    "predicted": lambda s, mag, sp, x: sp.predictor.keep(x),
}

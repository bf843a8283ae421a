"""Neuron choosers of the decode-time FFN: which neurons each token computes.

A chooser is a static object (its rule) plus a dict of stacked per-layer arrays (its
data: thresholds, predictor weights), so new thresholds or predictors never recompile.
On one layer's (possibly tensor-sharded, F-local) tables it returns, per token, the
CANDIDATE neurons to compute and what it already computed in full (`pre`), and the
final keep rule applied to the computed activation scores. Its masked form (every
neuron computed, the rule applied as a mask) is what `infer.ffn.full_ffn` runs; the
sparse form computes only the candidates' rows (`infer.ffn.sparse_ffn`). Both give the
same numbers.

  AllNeurons every neuron (the reference and the dense baseline).
  Threshold  keep |a_i|·‖W_out,i‖ ≥ t_l (`nn.sparsify.threshold_keep`, the masked
             `threshold` mode). Non-gated: a = σ(W_in x) is computed in full, the
             candidates are exactly the neurons active at t_l (`active_at`: kept, a ≠ 0).
             Gated: the gate
             s = σ(W_gate x) is computed in full; |a_i| = |s_i|·|W_in,i·x| ≤
             |s_i|·‖W_in,i‖·‖x‖ (Cauchy–Schwarz), so the candidates are the neurons whose
             bound reaches t_l (a superset of the kept ones, never missing one); their
             W_in rows are gathered and the exact rule applied to them.
  Predicted  a low-rank predictor (issue 12): score = sigmoid(W2·(W1·x) + b), W1
             (L, d, r), W2 (L, r, F), b (L, F); a neuron is computed iff score > 0.5
             (`nn.sparsify.PredictorSpec`, the masked mode's rule). Nothing of the FFN
             is read before the choice. (The top-k strategy of the predicted mode would
             need a global top-k across tensor shards; not offered here.)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sparsity_jax.nn.sparsify import PredictorSpec, active_at, magnitudes, threshold_keep

Array = jax.Array
Tables = dict[str, Array]
# Cauchy–Schwarz slack: the bound must stay ≥ the rounded |a| it bounds.
BOUND_SLACK = 1 + 1e-5


@dataclasses.dataclass(frozen=True)
class Act:
    """An FFN's activation maths, static, taken from `nn.ffn.FFN` (defined there once):
    `activate(h_in, h_gate)`, σ and, gated, `gated_scores(s, h_in)` = s ⊙ up(h_in)."""

    activate: Callable[..., Array]
    sigma: Callable[[Array], Array]
    gated: bool
    gated_scores: Callable[[Array, Array], Array]

    @classmethod
    def of(cls, ffn) -> "Act":
        return cls(ffn.activate, ffn.sigma, ffn.act.gated, ffn.gated_scores)


def project(w_FxD: Array, x_NxD: Array) -> Array:
    """x @ Wᵀ for a row-major neuron-by-d table: (N, F)."""
    return jnp.einsum("fd,nd->nf", w_FxD, x_NxD)


@dataclasses.dataclass(frozen=True)
class AllNeurons:
    """Every neuron."""

    name: str = "dense"

    def table_keys(self, gated: bool) -> tuple[str, ...]:
        return ("up", "gate", "out_t") if gated else ("up", "out_t")

    def specs(self, axis: str | None) -> dict[str, P]:
        return {}

    def candidates(self, arr, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, dict]:
        return jnp.ones((x_NxD.shape[0], tab["up"].shape[0]), bool), {}

    def keep(self, arr, a_NxK: Array, out_norm_K: Array | None) -> Array | None:
        return None


@dataclasses.dataclass(frozen=True)
class Threshold:
    """|a_i|·‖W_out,i‖ ≥ t_l; arrays {"threshold": (L,)}."""

    name: str = "threshold"

    def table_keys(self, gated: bool) -> tuple[str, ...]:
        return ("up", "gate", "out", "out_norm", "up_norm") if gated else ("up", "out", "out_norm")

    def specs(self, axis: str | None) -> dict[str, P]:
        return {"threshold": P()}

    def candidates(self, arr, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, dict]:
        t = arr["threshold"]
        if not act.gated:
            a_NxF = act.activate(project(tab["up"], x_NxD))
            return active_at(magnitudes(a_NxF, tab["out_norm"]), t), {"a": a_NxF}
        s_NxF = act.sigma(project(tab["gate"], x_NxD))
        x_norm_N = jnp.linalg.norm(x_NxD.astype(jnp.float32), axis=-1)
        bound_NxF = (jnp.abs(s_NxF).astype(jnp.float32) * (tab["up_norm"] * tab["out_norm"])
                     * x_norm_N[:, None] * BOUND_SLACK)
        return active_at(bound_NxF, t), {"s": s_NxF}  # bound ≥ ‖n_i‖: never misses one

    def keep(self, arr, a_NxK: Array, out_norm_K: Array | None) -> Array | None:
        return threshold_keep(magnitudes(a_NxK, out_norm_K), arr["threshold"])


@dataclasses.dataclass(frozen=True)
class Predicted:
    """The masked `predicted` FFN mode's rule (`nn.sparsify.PredictorSpec.keep`, strategy
    "threshold": score > 0.5); arrays {"w1": (L, d, r), "w2": (L, r, F), "b": (L, F)}
    (b optional)."""

    name: str = "predicted"

    def table_keys(self, gated: bool) -> tuple[str, ...]:
        return ("up", "gate", "out") if gated else ("up", "out")

    def specs(self, axis: str | None) -> dict[str, P]:
        return {"w1": P(), "w2": P(None, axis), "b": P(axis)}

    def candidates(self, arr, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, dict]:
        return PredictorSpec(arr["w1"], arr["w2"], arr.get("b")).keep(x_NxD), {}

    def keep(self, arr, a_NxK: Array, out_norm_K: Array | None) -> Array | None:
        return None


CHOOSERS = {"dense": AllNeurons, "threshold": Threshold, "predicted": Predicted}


def check_predictor(arrays: dict[str, Any], num_layers: int, d_model: int, d_ff: int) -> None:
    """ValueError unless W1 (L, d, r), W2 (L, r, F) and b (L, F) (if given) fit the model."""
    w1, w2 = (jnp.shape(arrays.get(k, ())) for k in ("w1", "w2"))
    b = jnp.shape(arrays.get("b", jnp.zeros((num_layers, d_ff))))
    r = w1[-1] if len(w1) == 3 else -1
    if w1 != (num_layers, d_model, r) or w2 != (num_layers, r, d_ff) or b != (num_layers, d_ff):
        raise ValueError(f"predictor arrays must be w1 ({num_layers}, {d_model}, r), w2 ({num_layers}, r, {d_ff}) "
                         f"and b ({num_layers}, {d_ff}); got w1 {w1}, w2 {w2}, b {b}")

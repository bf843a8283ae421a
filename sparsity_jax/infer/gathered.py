"""The gathered form of the FFN's sparsity modes (`nn.sparsify.Sparsify`): which neurons
each decoded token computes, and the rule applied to what it computed.

Decoding takes the same `Sparsify` as training and evaluation; its arrays (`decode_sparsify`:
thresholds (L,), predictor weights (L, ...)) are scanned with the layers, so new
thresholds or predictors never recompile. On one layer's (possibly tensor-sharded,
F-local) tables `candidates` gives, per token, the CANDIDATE neurons to compute and what
it already computed in full (`pre`); `keep` applies the mode's rule (`nn.sparsify.KEEP`,
the masked form's own) to the computed activation scores. The masked form (every neuron
computed, the rule a mask) is `infer.ffn.full_ffn`; the sparse form computes only the
candidates' rows (`infer.ffn.sparse_ffn`). Both give the masked mode's numbers.

  dense      every neuron (the reference and the dense baseline).
  threshold  keep ‖n_i‖ = |a_i|·‖W_out,i‖ ≥ t_l (`KEEP["threshold"]`). Non-gated: a = σ(W_in x)
             is computed in full and the candidates are exactly the neurons active at t_l
             (`active_at`). Gated: the gate s = σ(W_gate x) is computed in full;
             |a_i| = |s_i|·|W_in,i·x| ≤ |s_i|·‖W_in,i‖·‖x‖ (Cauchy–Schwarz), so the
             candidates are the neurons whose bound reaches t_l (a superset of the kept
             ones, never missing one); their W_in rows are gathered and the rule applied.
  predicted  the low-rank predictor's rule (`KEEP["predicted"]`: σ(W2·(W1·x) + b) > 0.5,
             ReLU² App. A.2) chooses the candidates before anything of the FFN is read.
             (Its top-k strategy would need a global top-k across tensor shards; not offered.)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sparsity_jax.nn.sparsify import KEEP, Sparsify, active_at, magnitudes

Array = jax.Array
Tables = dict[str, Array]
MODES = ("dense", "threshold", "predicted")
# Cauchy–Schwarz slack: the bound must stay ≥ the rounded |a| it bounds.
BOUND_SLACK = 1 + 1e-5
TABLE_KEYS = {  # (non-gated, gated) tables each mode reads (`infer.ffn.build_tables`)
    "dense": (("up", "out_t"), ("up", "gate", "out_t")),
    "threshold": (("up", "out", "out_norm"), ("up", "gate", "out", "out_norm", "up_norm")),
    "predicted": (("up", "out"), ("up", "gate", "out")),
}


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


def decode_sparsify(sp: Sparsify, num_layers: int, d_model: int, d_ff: int) -> Sparsify:
    """`sp` checked for decoding (one of MODES for every layer; ValueError naming the
    problem) and reduced to its mode's arrays, stacked (L, ...): the threshold
    broadcast to (L,), the predictor's W1 (L, d, r), W2 (L, r, F), b (L, F) or None;
    every other field None."""
    if not isinstance(sp.mode, str) or sp.mode not in MODES:
        raise ValueError(f"decoding gathers one mode for every layer, one of {', '.join(MODES)}; got {sp.mode!r}")
    if sp.unit_mask is not None or sp.record_threshold is not None:
        raise ValueError("decoding takes no unit_mask or record_threshold")
    out = Sparsify(mode=sp.mode, k=None, threshold=None, eps=None)
    if sp.mode == "threshold":
        t = jnp.asarray(sp.threshold, jnp.float32)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != num_layers):
            raise ValueError(f"the decode threshold must be a scalar or ({num_layers},), got shape {t.shape}")
        return out.replace(threshold=jnp.broadcast_to(t, (num_layers,)))
    if sp.mode == "predicted":
        pr = sp.predictor
        if pr is None or pr.strategy != "threshold":
            raise ValueError("predicted decoding needs Sparsify(predictor=PredictorSpec(w1, w2, b)) with the "
                             "threshold strategy (score > 0.5)")
        check_predictor(pr.w1, pr.w2, pr.b, num_layers, d_model, d_ff)
        f32 = lambda v: None if v is None else jnp.asarray(v, jnp.float32)  # noqa: E731
        return out.replace(predictor=pr.replace(w1=f32(pr.w1), w2=f32(pr.w2), b=f32(pr.b)))
    return out


def check_predictor(w1, w2, b, num_layers: int, d_model: int, d_ff: int) -> None:
    """ValueError unless W1 (L, d, r), W2 (L, r, F) and b (L, F) (if given) fit the model."""
    w1, w2 = jnp.shape(w1), jnp.shape(w2)
    b = (num_layers, d_ff) if b is None else jnp.shape(b)
    r = w1[-1] if len(w1) == 3 else -1
    if w1 != (num_layers, d_model, r) or w2 != (num_layers, r, d_ff) or b != (num_layers, d_ff):
        raise ValueError(f"predictor arrays must be w1 ({num_layers}, {d_model}, r), w2 ({num_layers}, r, {d_ff}) "
                         f"and b ({num_layers}, {d_ff}); got w1 {w1}, w2 {w2}, b {b}")


def specs(sp: Sparsify, axis: str | None, lead: tuple = ()) -> Sparsify:
    """PartitionSpecs of `sp`'s arrays (a `decode_sparsify` result or one layer of it):
    the predictor's per-neuron axes over `axis`, the rest replicated; `lead` prefixes each."""
    pr = sp.predictor
    return sp.replace(
        threshold=None if sp.threshold is None else P(*lead),
        predictor=None if pr is None else pr.replace(w1=P(*lead), w2=P(*lead, None, axis),
                                                     b=None if pr.b is None else P(*lead, axis)))


def candidates(sp: Sparsify, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, dict]:
    """Layer settings `sp` → (candidates (N, F) bool, what was computed in full: {"a"} or {"s"})."""
    if sp.mode == "dense":
        return jnp.ones((x_NxD.shape[0], tab["up"].shape[0]), bool), {}
    if sp.mode == "predicted":
        return KEEP["predicted"](None, None, sp, x_NxD), {}
    if not act.gated:
        a_NxF = act.activate(project(tab["up"], x_NxD))
        return active_at(magnitudes(a_NxF, tab["out_norm"]), sp.threshold), {"a": a_NxF}
    s_NxF = act.sigma(project(tab["gate"], x_NxD))
    x_norm_N = jnp.linalg.norm(x_NxD.astype(jnp.float32), axis=-1)
    bound_NxF = (jnp.abs(s_NxF).astype(jnp.float32) * (tab["up_norm"] * tab["out_norm"])
                 * x_norm_N[:, None] * BOUND_SLACK)
    return active_at(bound_NxF, sp.threshold), {"s": s_NxF}  # bound ≥ ‖n_i‖: never misses one


def keep(sp: Sparsify, a_NxK: Array, out_norm_K: Array | None) -> Array | None:
    """The mode's rule on the computed scores (N, K): threshold ‖n_i‖ ≥ t; None (the
    candidates are final) for dense and predicted."""
    if sp.mode != "threshold":
        return None
    return KEEP["threshold"](None, magnitudes(a_NxK, out_norm_K), sp, None)

"""The gathered form of the FFN's sparsity modes (`nn.sparsify.Sparsify`; the masked form
is `nn.ffn.FFN`): per decoded token, which neurons to compute, reading only their rows.

Modes (`decode_sparsify` checks one and stacks its arrays (L, ...), scanned with the
layers, so new thresholds or predictors never recompile). `candidates` gives each
token's CANDIDATES and what it computed in full; `keep` applies the masked mode's own
rule (`nn.sparsify.KEEP`) to the computed scores, so both forms give the same numbers.
  dense      every neuron (the reference and the dense baseline).
  threshold  keep ‖n_i‖ = |a_i|·‖W_out,i‖ ≥ t_l. Non-gated: a = σ(W_in x) in full, the
             candidates are the neurons active at t_l. Gated: the gate s in full;
             |a_i| ≤ |s_i|·‖W_in,i‖·‖x‖ (Cauchy–Schwarz), so the neurons whose bound
             reaches t_l (a superset of the kept ones), whose W_in rows are then gathered.
  predicted  σ(W2·(W1·x) + b) > 0.5 (ReLU² App. A.2) chooses before any FFN weight is read
             (its top-k strategy would need a top-k across tensor shards; not offered).

Tables (`build_tables`, once per model): row-major neuron-by-d copies of the kernels
(`up` = W_inᵀ, `gate` = W_gateᵀ, `out` = W_out, each (F, d): a neuron is one contiguous
row; `out_t` = W_outᵀ for the dense mode, faster at batch 1 on XLA:CPU) and the norms.
`sparse_ffn` (one decode step): the union of the rows' candidates, over blocks of b
neurons (single neurons: b = 1), is compacted into the smallest static budget that holds
it (`budgets`, from `infer.budget`; `allowed` marks a layer's own where layers share one
tuple under a scan), whose b×d slabs the block kernels read (`infer.kernels`: XLA
`CHUNK` rows at a time, Pallas TPU / GPU); a union over every budget runs the masked form
(`full_ffn`), so only the time changes. With a tensor axis each shard of F chooses and
gathers its own neurons and the outputs are summed (`layer_ffn`, shard_map).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sparsity_jax.infer import kernels
from sparsity_jax.nn.sparsify import KEEP, Sparsify, active_at, magnitudes

Array = jax.Array
Tables = dict[str, Array]
MODES = ("dense", "threshold", "predicted")
CHUNK = 128  # rows gathered per block (bench/sparse_decode.py --chunk)
TABLE_SPECS = {"up": (0, 2), "gate": (0, 2), "out": (0, 2), "out_t": (1, 2), "out_norm": (0, 1), "up_norm": (0, 1)}
# Cauchy–Schwarz slack: the bound must stay ≥ the rounded |a| it bounds.
BOUND_SLACK = 1 + 1e-5
TABLE_KEYS = {  # (non-gated, gated) tables each mode reads (`build_tables`)
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


def build_tables(ffn, keys: tuple[str, ...]) -> Tables:
    """The tables named in `keys` from an `nn.ffn.FFN`, one layer's or stacked (`LM.ffns`:
    every table then (L, ...)) (call under jit: the copies are made once)."""
    k = ffn.kernels()
    t = lambda w: jnp.swapaxes(w, -1, -2)  # noqa: E731
    tab = {"up": t(k["in"]), "gate": t(k.get("gate", k["in"])), "out": k["out"], "out_t": t(k["out"])}
    make = {**{n: (lambda n=n: tab[n]) for n in tab}, "out_norm": ffn.out_norms,
            "up_norm": lambda: jnp.linalg.norm(k["in"].astype(jnp.float32), axis=-2)}
    return {n: make[n]() for n in keys if n != "gate" or ffn.act.gated}


def table_specs(tab: Tables, axis: str | None) -> dict[str, P]:
    """PartitionSpecs of one layer's tables: the neuron axis over `axis`."""
    out = {}
    for n in tab:
        dim, rank = TABLE_SPECS[n]
        spec = [None] * rank
        spec[dim] = axis
        out[n] = P(*spec)
    return out


def compact(union_F: Array, k: int) -> Array:
    """The indices of the True entries of `union_F`, ascending, padded with 0 to length k."""
    return jnp.flatnonzero(union_F, size=k, fill_value=0).astype(jnp.int32)


def _products(rows, fn, gate: bool) -> Array:
    """fn(W_in x, W_gate x) of the computed neurons (`gate`), fn(W_in x), or W_in x (fn None);
    `rows(name)` is x times the rows of table `name`, (N, K)."""
    h_NxK = rows("up")
    if gate:
        return fn(h_NxK, rows("gate"))
    return h_NxK if fn is None else fn(h_NxK)


def _scores(act: Act, pre: dict, up, take) -> Array:
    """Activation scores (N, K) of the computed neurons, by the FFN's own maths (`Act`):
    the full scores `a` or gate scores `s` when `gathered.candidates` computed them (`take`
    picks the K neurons), else from the products `up(fn, gate)` (`_products`, a block kernel)."""
    if "a" in pre:
        return take(pre["a"])
    if "s" in pre:
        return act.gated_scores(take(pre["s"]), up(None, False))
    return up(act.activate, act.gated)


def _view(w_FxD: Array, block: int) -> Array:
    return w_FxD.reshape(-1, block, w_FxD.shape[-1])


def _full_scores(tab: Tables, x_NxD: Array, act: Act, pre: dict) -> Array:
    return _scores(act, pre, functools.partial(_products, lambda n: project(tab[n], x_NxD)), lambda v: v)


def _chosen_scores(tab: Tables, x_NxD: Array, act: Act, pre: dict, idx_K: Array, bidx, block: int, chunk: int,
                   kernel: str) -> Array:
    """Scores of the K chosen neurons `idx_K`, the blocks `bidx` of `block` neurons, through
    a block kernel (single neurons: blocks of 1)."""
    def up(fn, gate):
        return kernels.block_up(x_NxD, _view(tab["up"], block), bidx, gate_GxBxD=_view(tab["gate"], block)
                                if gate else None, act=fn, kernel=kernel, chunk=chunk)

    return _scores(act, pre, up, lambda v: jnp.take(v, idx_K, axis=1))


def _masked(sp: Sparsify, tab, x_NxD, act, cand_NxF, pre) -> tuple[Array, Array]:
    a_NxF = _full_scores(tab, x_NxD, act, pre)
    if sp.mode == "dense":
        return jnp.einsum("df,nf->nd", tab["out_t"], a_NxF), cand_NxF
    rule_NxF = keep(sp, a_NxF, tab.get("out_norm"))
    keep_NxF = cand_NxF if rule_NxF is None else cand_NxF & rule_NxF
    a_NxF = jnp.where(keep_NxF, a_NxF, jnp.zeros_like(a_NxF))
    return (jnp.einsum("df,nf->nd", tab["out_t"], a_NxF) if "out_t" in tab else a_NxF @ tab["out"]), keep_NxF


def full_ffn(sp: Sparsify, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, Array, Array]:
    """Masked form: (y (N, d), kept (N, F), candidates (N, F)); every neuron computed."""
    cand_NxF, pre = candidates(sp, tab, x_NxD, act)
    y_NxD, keep_NxF = _masked(sp, tab, x_NxD, act, cand_NxF, pre)
    return y_NxD, keep_NxF, cand_NxF


def sparse_ffn(sp: Sparsify, tab: Tables, x_NxD: Array, act: Act, budgets: tuple[int, ...],
               allowed_S: Array | None = None, chunk: int = 0, block: int = 0,
               kernel: str = "auto") -> tuple[Array, dict[str, Array]]:
    """Sparse form: y (N, d) and stats {kept_N: kept neurons per row, rows: neurons
    computed, union: neurons in the union of the rows' candidates, read: neurons in the
    union's blocks (= union without blocks), over: the union exceeded the first budget,
    dense: it exceeded every budget}. With `block` the budgets are multiples of it.
    `allowed_S` (bool, one per budget; None: all) limits the layer to some of `budgets`."""
    f = tab["out"].shape[0]
    cand_NxF, pre = candidates(sp, tab, x_NxD, act)
    union_F = jnp.any(cand_NxF, axis=0)
    count = jnp.sum(union_F, dtype=jnp.int32)
    # single neurons are blocks of b = 1, read by XLA's row gather (the Pallas kernels tile b × d slabs)
    b, kernel = (block, kernel) if block else (1, "xla")
    union_G = jnp.any(union_F.reshape(-1, b), axis=-1)
    need = jnp.sum(union_G, dtype=jnp.int32) * b

    def at_budget(k: int):
        bidx = compact(union_G, k // b)
        idx_K = (bidx[:, None] * b + jnp.arange(b, dtype=jnp.int32)).reshape(-1)
        a_NxK = _chosen_scores(tab, x_NxD, act, pre, idx_K, bidx, b, chunk, kernel)
        live_NxK = (jnp.arange(k) < need)[None, :] & jnp.take(cand_NxF, idx_K, axis=1)
        rule_NxK = keep(sp, a_NxK, jnp.take(tab["out_norm"], idx_K) if "out_norm" in tab else None)
        keep_NxK = live_NxK if rule_NxK is None else live_NxK & rule_NxK
        a_NxK = jnp.where(keep_NxK, a_NxK, jnp.zeros_like(a_NxK))
        y_NxD = kernels.block_down(a_NxK, _view(tab["out"], b), bidx, kernel=kernel, chunk=chunk)
        return y_NxD, jnp.sum(keep_NxK, -1, dtype=jnp.int32)

    def dense():
        y_NxD, keep_NxF = _masked(sp, tab, x_NxD, act, cand_NxF, pre)
        return y_NxD, jnp.sum(keep_NxF, -1, dtype=jnp.int32)

    sizes_S = jnp.asarray(budgets, jnp.int32)
    allowed_S = jnp.ones(len(budgets), bool) if allowed_S is None else allowed_S
    fits_S = allowed_S & (need <= sizes_S)  # the smallest allowed budget that holds the union, else dense
    branch = jnp.where(jnp.any(fits_S), jnp.argmax(fits_S), len(budgets)) if budgets else jnp.int32(0)
    y_NxD, kept_N = jax.lax.switch(branch, [functools.partial(at_budget, k) for k in budgets] + [dense])
    rows = jnp.asarray(tuple(budgets) + (f,), jnp.int32)[branch]
    # no allowed budget: a dense layer by choice, never "over"
    over = (jnp.any(allowed_S) & (need > sizes_S[jnp.argmax(allowed_S)])) if budgets else jnp.bool_(False)
    return y_NxD, {"kept_N": kept_N, "rows": rows, "union": count, "read": need, "over": over,
                   "dense": branch == len(budgets)}


def layer_ffn(sp: Sparsify, tab: Tables, x_NxD: Array, act: Act, *, mesh=None, axis: str | None = None,
              budgets: tuple[int, ...] | None = None, allowed_S: Array | None = None, chunk: int = 0,
              block: int = 0, kernel: str = "auto"):
    """One layer's FFN with its settings `sp` (a mode of `MODES`) on
    (possibly tensor-sharded) tables: `sparse_ffn` with `budgets` (per shard; `allowed_S`
    the layer's own), else `full_ffn`. With `axis`, a shard_map over it: x replicated,
    each shard its neurons, outputs and counts summed; masks come back (N, F) sharded on F."""
    def local(sp, tab, x_NxD, allowed_S):
        if budgets is None:
            y, keep, cand = full_ffn(sp, tab, x_NxD, act)
            return (jax.lax.psum(y, axis) if axis else y), keep, cand
        y, st = sparse_ffn(sp, tab, x_NxD, act, budgets, allowed_S, chunk, block, kernel)
        if axis:
            y = jax.lax.psum(y, axis)
            st = {"kept_N": jax.lax.psum(st["kept_N"], axis), "rows": jax.lax.psum(st["rows"], axis),
                  "union": jax.lax.psum(st["union"], axis), "read": jax.lax.psum(st["read"], axis),
                  "over": jax.lax.pmax(st["over"].astype(jnp.int32), axis) > 0,
                  "dense": jax.lax.pmax(st["dense"].astype(jnp.int32), axis) > 0}
        return y, st

    if axis is None:
        return local(sp, tab, x_NxD, allowed_S)
    out_specs = (P(), P(None, axis), P(None, axis)) if budgets is None else (P(), P())
    in_specs = (specs(sp, axis), table_specs(tab, axis), P(), P())
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)(sp, tab, x_NxD, allowed_S)

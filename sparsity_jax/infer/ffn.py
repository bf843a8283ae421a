"""The decode-time FFN: only the chosen neurons' kernel rows are read and multiplied.

Tables (`build_tables`, once per model): row-major neuron-by-d copies of the kernels,
`up` = W_inᵀ (F, d), `gate` = W_gateᵀ (F, d), `out` = W_out (F, d) (already that layout
in Flax), so a neuron's weights are one contiguous d-vector and a gather of K neurons
reads K contiguous rows; `out_t` = W_outᵀ (d, F) serves the dense mode, whose batch-1
product x·W_out is ~2× faster in that layout on XLA:CPU (bench/sparse_decode.py), so the
dense baseline is the best dense we have. Norms ‖W_out,i‖ and ‖W_in,i‖ for the rules.

`sparse_ffn` (one decode step, N = batch rows): the layer's `Sparsify` mode gives each
row's candidates (`infer.gathered`); their UNION over the rows is compacted into a static
budget K (`budgets`, ascending, a few buckets chosen by `infer.budget`; `allowed` marks
this layer's own when layers share one tuple under a scan); `lax.switch` runs the smallest
budget that holds the union, gathering K rows of each kernel read after the choice, or,
when the union overflows every budget, the masked dense form — the result is never
changed, only the time. Unused budget slots point at row 0 with a zero score. Single
neurons are blocks of b = 1 (below): the K rows are gathered `CHUNK` at a time inside a
scan (`infer.kernels.xla`), since one K×d gather per kernel writes a fresh buffer to
memory, which on XLA:CPU costs about as much as the product it saves
(bench/sparse_decode.py, "why"). `full_ffn` is the masked form (prefill, calibration, the
reference). With a tensor axis the F axis of the tables is sharded, each shard chooses and
gathers its own neurons with its own budget, and the outputs are summed (`layer_ffn`,
shard_map).

Block gathers (`block` = b > 0, issue 22): the union is taken over contiguous blocks of b
neurons (a block counts if any of its neurons is a candidate), the budgets count neurons
in whole blocks (multiples of b), and the products read whole b×d slabs of the (F/b, b, d)
views of the tables (`infer.kernels`: XLA, Pallas TPU or Pallas GPU, `kernel`). The
non-candidate neurons of a chosen block are computed and masked out, so the result is the
same; a co-activation neuron order (`infer.neuron_order`) makes the blocks full.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sparsity_jax.infer import kernels
from sparsity_jax.infer import gathered
from sparsity_jax.infer.gathered import Act, project
from sparsity_jax.nn.sparsify import Sparsify

Array = jax.Array
Tables = dict[str, Array]
CHUNK = 128  # rows gathered per block (bench/sparse_decode.py --chunk)
TABLE_SPECS = {"up": (0, 2), "gate": (0, 2), "out": (0, 2), "out_t": (1, 2), "out_norm": (0, 1), "up_norm": (0, 1)}


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
    keep = gathered.keep(sp, a_NxF, tab.get("out_norm"))
    keep_NxF = cand_NxF if keep is None else cand_NxF & keep
    a_NxF = jnp.where(keep_NxF, a_NxF, jnp.zeros_like(a_NxF))
    return (jnp.einsum("df,nf->nd", tab["out_t"], a_NxF) if "out_t" in tab else a_NxF @ tab["out"]), keep_NxF


def full_ffn(sp: Sparsify, tab: Tables, x_NxD: Array, act: Act) -> tuple[Array, Array, Array]:
    """Masked form: (y (N, d), kept (N, F), candidates (N, F)); every neuron computed."""
    cand_NxF, pre = gathered.candidates(sp, tab, x_NxD, act)
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
    cand_NxF, pre = gathered.candidates(sp, tab, x_NxD, act)
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
        keep = gathered.keep(sp, a_NxK, jnp.take(tab["out_norm"], idx_K) if "out_norm" in tab else None)
        keep_NxK = live_NxK if keep is None else live_NxK & keep
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
    """One layer's FFN with its settings `sp` (a mode of `infer.gathered.MODES`) on
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
    in_specs = (gathered.specs(sp, axis), table_specs(tab, axis), P(), P())
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)(sp, tab, x_NxD, allowed_S)

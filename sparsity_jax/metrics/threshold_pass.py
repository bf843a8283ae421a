"""The passes of the exact CETT threshold search over scores split across a mesh (ReLU² §3).

The search (`threshold_search.py`) reads the activation scores block by block (`Scores`:
a cached array, or recomputed per pass, e.g. by the dense model on one validation batch).
Every pass runs one local kernel per block under `jax.shard_map` — tokens split over
`ScorePlacement.tokens`, neurons (F) over `ScorePlacement.neurons` — with explicit collectives: products
are psum'd over the neuron axes, sums over the token axes, pair counts (exact int32 words,
`cett.count_words`) over both; only per-layer scalars, proxy rows and ≤ window
candidates leave a device. Without a mesh the same kernels run as plain jitted code.
  setup_block   dense-output norms per token, pair counts, magnitude range, proxy rows
  eval_block    one truncated product per layer and target: CETT numerator, dropped count
  finish_block  the candidates in [t_lo, t_hi): magnitude and CETT increment, merged
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from sparsity_jax.metrics.cett import (
    PRECISION, Axes, count_words, layer_magnitudes, prepare_layer, psum, psum_words, truncated,
)
from sparsity_jax.nn.sparsify import active_at, threshold_keep

Array = jax.Array

_FINISH_FLOATS = 1 << 18  # floats per (chunk × d) array of the exact finish


class Totals(NamedTuple):
    """Per-layer sums of the set-up pass (`setup_block`) over every real token, replicated."""

    n_valid: Array  # (L,) int32: counted tokens (real, FFN output ≠ 0)
    n_real: Array  # () int32: real tokens
    n_pos: Array  # (L, 2) words: real pairs with a positive finite magnitude
    n_zero: Array  # (L, 2) words: real pairs with a zero magnitude
    pos_min: Array  # (L,) smallest positive real magnitude
    pos_max: Array  # (L,) largest finite real magnitude
    proxy_LxPxF: Array  # the proxy tokens' activation scores, float32, all F


class ScorePlacement(NamedTuple):
    """How the scores (L, B, T..., F) lie on a mesh: the leading token axis split over the
    mesh axes `tokens`, F over `neurons`; mesh None: one device, no shard_map."""

    mesh: Any = None
    tokens: tuple[str, ...] = ()
    neurons: tuple[str, ...] = ()

    @property
    def axes(self) -> Axes:
        return Axes(self.tokens or None, self.neurons or None)

    def spec(self, kind: str, ndim: int = 0) -> P:
        """PartitionSpec of a kernel argument: 'scores' (L, B, T..., F), 'tokens' (B, T...),
        'layer_tokens' (L, B, T...), 'w_out' (L, F, d), 'layer_neurons' (L, F), 'rep'."""
        tok, neu = self.tokens or None, self.neurons or None
        rest = (None,) * max(ndim - 3, 0)
        return {"scores": P(None, tok, *rest, neu), "tokens": P(tok, *(None,) * (ndim - 1)),
                "layer_tokens": P(None, tok, *(None,) * (ndim - 2)), "w_out": P(None, neu, None),
                "layer_neurons": P(None, neu), "rep": P()}[kind]

    def sharding(self, kind: str, ndim: int = 0) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, self.spec(kind, ndim))


def auto_view(x):
    """A concrete array on a mesh with Explicit axes (the `jax.make_mesh` default) viewed
    on the same devices with Auto axes (zero-copy), so that the passes reshard freely;
    anything else unchanged."""
    sharding = None if isinstance(x, jax.core.Tracer) else getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or all(t == AxisType.Auto for t in sharding.mesh.axis_types):
        return x
    return jax.device_put(x, NamedSharding(Mesh(sharding.mesh.devices, sharding.mesh.axis_names), sharding.spec))


def placement_of(a: Array) -> ScorePlacement:
    """The placement of concrete scores `a` (L, B, T..., F) from their NamedSharding (on an
    Auto mesh: `auto_view`); one device, traced, or no NamedSharding: `ScorePlacement()` (under
    the caller's jit, GSPMD then partitions the one-device code)."""
    sharding = None if isinstance(a, jax.core.Tracer) else getattr(a, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if not isinstance(sharding, NamedSharding) or math.prod(mesh.shape.values()) == 1:
        return ScorePlacement()
    spec = tuple(sharding.spec) + (None,) * (a.ndim - len(sharding.spec))
    names = lambda e: tuple(n for n in ((e,) if isinstance(e, str) else e or ()) if mesh.shape[n] > 1)  # noqa: E731
    return ScorePlacement(mesh, names(spec[1]), names(spec[-1]))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Scores:
    """Where a search reads its activation scores, one block (L, B, T..., F) at a time:
    `cached` holds them ((nb, L, ...) when `stacked`, else one block), or `compute(args, i)`
    recomputes block i (streaming: no cache, one block in memory). `placement`, `compute`,
    `n_blocks` and `stacked` are static (part of the compiled function)."""

    cached: Array | None
    args: Any
    placement: ScorePlacement
    n_blocks: int
    stacked: bool = True
    compute: Callable | None = None

    def block(self, i: Array) -> Array:
        if self.cached is None:
            return self.compute(self.args, i)
        return lax.dynamic_index_in_dim(self.cached, i, keepdims=False) if self.stacked else self.cached

    def tree_flatten(self):
        return (self.cached, self.args), (self.placement, self.n_blocks, self.stacked, self.compute)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)


def over_blocks(scores: Scores, fn: Callable[[Array], Any]) -> Any:
    """fn(i) for every block, outputs stacked on a leading block axis (one lax.scan)."""
    return lax.scan(lambda _, i: (None, fn(i)), None, jnp.arange(scores.n_blocks))[1]


def run_sharded(placement: ScorePlacement, kernel: Callable, in_kinds: tuple, out_specs, *args):
    """kernel(axes, *args) — under shard_map on the placement's mesh, or plainly without one."""
    if placement.mesh is None:
        return kernel(Axes(), *args)
    in_specs = tuple(placement.spec(kind, jnp.ndim(x)) for kind, x in zip(in_kinds, args))
    return jax.shard_map(functools.partial(kernel, placement.axes), mesh=placement.mesh, in_specs=in_specs,
                         out_specs=out_specs)(*args)


def _shard_index(axis) -> Array:
    return jnp.int32(0) if not axis else lax.axis_index(axis)


def _gather(x: Array, axis, dim: int = 0) -> Array:
    """All-gather along `dim` over `axis` (tiled; replicated result), the identity for None."""
    return x if not axis else lax.all_gather(x, axis, axis=dim, tiled=True, to="invarying")


def _flat(a: Array, real: Array, inv: Array | None = None):
    """Local block → (a_LxMxF, real_M, inv_LxM)."""
    L, F = a.shape[0], a.shape[-1]
    return a.reshape(L, -1, F), real.reshape(-1), None if inv is None else inv.reshape(L, -1)


def setup_block(placement: ScorePlacement, a: Array, w_out_LxFxD: Array, real: Array, pos_P: Array,
                here_P: Array) -> tuple[Array, Totals]:
    """The set-up pass on one block: (inv_norm (L, B, T...) 1/‖FFN(x)‖ per token, Totals).

    `pos_P`, `here_P`: the proxy tokens' positions in the block and whether each is in
    this block (`threshold_setup.proxy_tokens`)."""
    return run_sharded(placement, setup_kernel, ("scores", "w_out", "tokens", "rep", "rep"),
                       (placement.spec("layer_tokens", real.ndim + 1), P()), a, w_out_LxFxD, real, pos_P, here_P)


def setup_kernel(axes: Axes, a, w_out_LxFxD, real, pos_P, here_P) -> tuple[Array, Totals]:
    """`setup_block` on this device's part (tokens split over axes.tokens, F over axes.neurons)."""
    a_LxMxF, real_M, _ = _flat(a, real)
    M = a_LxMxF.shape[1]
    offset = _shard_index(axes.tokens) * M
    mine_P = here_P & (pos_P >= offset) & (pos_P < offset + M)
    row_P = jnp.clip(pos_P - offset, 0, M - 1)

    def one_layer(args):
        layer = prepare_layer(*args, real_M, axes)
        mag_MxF = layer_magnitudes(layer)
        finite_MxF = jnp.isfinite(mag_MxF)
        pos_MxF = finite_MxF & (mag_MxF > 0)
        rows_PxF = jnp.where(mine_P[:, None], args[0][row_P].astype(jnp.float32), 0.0)
        return (layer.inv_norm_N, jnp.sum(layer.inv_norm_N > 0, dtype=jnp.int32), count_words(pos_MxF),
                count_words(finite_MxF & ~pos_MxF), jnp.min(jnp.where(pos_MxF, mag_MxF, jnp.inf)),
                jnp.max(jnp.where(finite_MxF, mag_MxF, 0.0)), rows_PxF)

    inv_LxM, n_valid, n_pos, n_zero, lo, hi, rows = lax.map(one_layer, (a_LxMxF, w_out_LxFxD))
    every = axes.every
    totals = Totals(
        psum(n_valid, axes.tokens), psum(jnp.sum(real_M, dtype=jnp.int32), axes.tokens),
        psum_words(n_pos, every), psum_words(n_zero, every),
        lo if not every else lax.pmin(lo, every), hi if not every else lax.pmax(hi, every),
        _gather(psum(rows, axes.tokens), axes.neurons, dim=2))
    return inv_LxM.reshape((a.shape[0],) + real.shape), totals


def _layers(a_LxMxF, w_out_LxFxD, inv_LxM):
    return a_LxMxF, w_out_LxFxD.astype(jnp.float32), inv_LxM


def eval_block(placement: ScorePlacement, a: Array, w_out_LxFxD: Array, real: Array, inv: Array, t_LxK: Array,
               active_LxK: Array) -> tuple[Array, Array]:
    """One truncated product per active (layer, target) on one block: (Σ_tokens CETT
    numerator (L, K) float32, dropped real pairs (L, K, 2) words); 0 where inactive."""
    return run_sharded(placement, eval_kernel, ("scores", "w_out", "tokens", "layer_tokens", "rep", "rep"), P(),
                       a, w_out_LxFxD, real, inv, t_LxK, active_LxK)


def eval_kernel(axes: Axes, a, w_out_LxFxD, real, inv, t_LxK, active_LxK) -> tuple[Array, Array]:
    """`eval_block` on this device's part; the results are psum'd (complete everywhere)."""
    a_LxMxF, real_M, inv_LxM = _flat(a, real, inv)

    def one_layer(args):
        a_MxF, w_out_FxD, inv_M, t_K, active_K = args
        layer = prepare_layer(a_MxF, w_out_FxD, real_M, axes, inv_M)

        def one_target(t, on):
            def run():
                ratio, dropped, _ = truncated(layer, t, axes)
                return psum(ratio, axes.tokens), psum_words(dropped, axes.every)
            return lax.cond(on, run, lambda: (jnp.float32(0.0), jnp.zeros((2,), jnp.int32)))

        return lax.map(lambda x: one_target(*x), (t_K, active_K))

    return lax.map(one_layer, (*_layers(a_LxMxF, w_out_LxFxD, inv_LxM), t_LxK, active_LxK))


class Candidates(NamedTuple):
    """≤ window magnitudes in [t_lo, t_hi) per (layer, target), ascending, with each one's
    CETT numerator increment (its token's truncated sum growing by that neuron's output)."""

    e_W: Array  # magnitudes (+inf where not ok)
    delta_W: Array  # Σ-CETT increment when the neuron is dropped too
    ok_W: Array  # bool
    t_safe: Array  # smallest positive magnitude ≥ t_lo (used when the bracket did not close)


def compact(size: int, e_W: Array, ok_W: Array, *values: Array) -> tuple[Array, ...]:
    """The `size` smallest ok magnitudes first, ascending (stable), with their values."""
    order = jnp.argsort(jnp.where(ok_W, e_W, jnp.inf), stable=True)[:size]
    return (e_W[order], ok_W[order]) + tuple(v[order] for v in values)


def first_true(in_MxF: Array, size: int, flat: bool | None = None) -> tuple[Array, Array, Array]:
    """(row_W, col_W, ok_W): up to `size` True entries of in_MxF, without flat indices of
    M·F ≥ 2³¹ entries. XLA:CPU runs a top-k far faster than a cumsum, so below 2³¹
    entries on CPU: top-k on the flat mask; else each entry's slot is its row's offset
    (a cumsum of per-row counts, ≤ size when the bracket is closed) plus its rank in the
    row, scattered into `size` slots. `flat`: force the first (True) or second way."""
    M, F = in_MxF.shape
    if flat is None:
        flat = jax.default_backend() == "cpu" and M * F < 2**31
    if flat:
        k = min(size, M * F)
        idx = lax.top_k(in_MxF.reshape(-1).astype(jnp.float32), k)[1]
        row, col = jnp.pad(idx // F, (0, size - k)), jnp.pad(idx % F, (0, size - k))
        return row, col, in_MxF[row, col] & (jnp.arange(size) < k)
    count_M = jnp.sum(in_MxF, axis=1, dtype=jnp.int32)
    slot_MxF = (jnp.cumsum(count_M) - count_M)[:, None] + jnp.cumsum(in_MxF, axis=1, dtype=jnp.int32) - 1
    slot_MxF = jnp.where(in_MxF & (slot_MxF < size), slot_MxF, size)
    put = lambda v: jnp.zeros((size,), v.dtype).at[slot_MxF].set(v, mode="drop")  # noqa: E731
    return (put(jnp.broadcast_to(jnp.arange(M)[:, None], (M, F))), put(jnp.broadcast_to(jnp.arange(F), (M, F))),
            put(jnp.ones((M, F), bool)))


def _token_deltas(row_W, ok_W, a_W, col_W, inv_W, w_full_FxD, base_of: Callable, token_axis) -> Array:
    """Per candidate (magnitude order), the change of its token's ‖truncated sum‖/‖FFN(x)‖
    when it is dropped after the token's smaller candidates: its output a·w_out[col] is
    added per token, in magnitude order, onto the token's truncated sum at t_lo
    (`base_of(rows) -> (C, d)`). A scan over chunks of `_FINISH_FLOATS`/d candidates
    grouped by token, carrying the running sum of the token that spans two chunks, so
    only chunk × d floats are live (the window is not split over devices)."""
    W, d = row_W.shape[0], w_full_FxD.shape[1]
    C = int(min(W, max(64, _FINISH_FLOATS // d)))
    order = jnp.argsort(jnp.where(ok_W, row_W, jnp.iinfo(jnp.int32).max), stable=True)  # by token, magnitude within
    pad = -W % C
    chunked = [jnp.pad(x[order], (0, pad)).reshape(-1, C) for x in (row_W, ok_W, a_W, col_W, inv_W)]

    def chunk(carry, xs):
        row_prev, sum_D, after_prev = carry
        row_C, ok_C, a_C, col_C, inv_C = xs
        key_C = jnp.where(ok_C, row_C, jnp.iinfo(jnp.int32).max)
        inv_C = jnp.where(ok_C, inv_C, 0.0)
        base_CxD = base_of(jnp.where(ok_C, row_C, 0))
        # Segmented prefix sums as differences of one cumsum (a segmented associative_scan
        # compiles ~10x slower); rounding stays far below the truncated sums' size.
        first_C = jnp.searchsorted(key_C, key_C, side="left", method="sort")  # start of each token's run
        cum_CxD = jnp.cumsum(jnp.where(ok_C, a_C, 0.0)[:, None] * w_full_FxD[col_C], axis=0)
        prefix_CxD = cum_CxD - jnp.where((first_C > 0)[:, None], cum_CxD[first_C - 1], 0.0)
        cont_C = (key_C == row_prev) & (first_C == 0)  # the run of the previous chunk's last token
        prefix_CxD = prefix_CxD + jnp.where(cont_C[:, None], sum_D, 0.0)
        after_C = jnp.linalg.norm(base_CxD + prefix_CxD, axis=-1) * inv_C
        start_before = jnp.where(cont_C, after_prev, jnp.linalg.norm(base_CxD, axis=-1) * inv_C)
        before_C = jnp.where(first_C == jnp.arange(C), start_before, jnp.roll(after_C, 1))
        return (key_C[-1], prefix_CxD[-1], after_C[-1]), jnp.where(ok_C, after_C - before_C, 0.0)

    init = (jnp.int32(-1), jnp.zeros((d,), jnp.float32), jnp.float32(0.0))
    if token_axis:  # the carry varies over the token shards, like the candidates
        init = lax.pcast(init, token_axis, to="varying")
    delta_g = lax.scan(chunk, init, tuple(chunked))[1].reshape(-1)[:W]
    return jnp.zeros((W,), jnp.float32).at[order].set(delta_g)


def finish_block(placement: ScorePlacement, a: Array, w_out_LxFxD: Array, real: Array, inv: Array, t_lo_LxK: Array,
                 t_hi_LxK: Array, closed_LxK: Array, window: int) -> Candidates:
    """The exact finish on one block, per (layer, target): where the bracket closed, the
    ≤ window positive magnitudes in [t_lo, t_hi) — extracted per device, merged over the
    neuron shards (their token's outputs need every neuron), their increments computed
    on the token's device, merged over the token shards; elsewhere `t_safe`."""
    def kernel(axes, a, w_out_LxFxD, real, inv, t_lo_LxK, t_hi_LxK, closed_LxK):
        a_LxMxF, real_M, inv_LxM = _flat(a, real, inv)
        M, F_loc = a_LxMxF.shape[1:]
        col_offset = _shard_index(axes.neurons) * F_loc

        def one_layer(args):
            a_MxF, w_out_FxD, inv_M, t_lo_K, t_hi_K, closed_K = args
            layer = prepare_layer(a_MxF, w_out_FxD, real_M, axes, inv_M)
            w_full_FxD = _gather(layer.w_out_FxD, axes.neurons)

            def candidates(t_lo, t_hi):
                mag_MxF = layer_magnitudes(layer)
                row, col, ok = first_true(active_at(mag_MxF, t_lo) & ~threshold_keep(mag_MxF, t_hi), window)
                e = jnp.where(ok, mag_MxF[row, col], jnp.inf)
                a_W = jnp.where(ok, a_MxF[row, col].astype(jnp.float32), 0.0)
                e, ok, row, col, a_W = compact(window, *(_gather(x, axes.neurons) for x in
                                                         (e, ok, row, col + col_offset, a_W)))
                lo_MxF = jnp.where(threshold_keep(mag_MxF, t_lo), 0.0, a_MxF.astype(jnp.float32))
                product = lambda x: psum(jnp.matmul(x, layer.w_out_FxD, precision=PRECISION), axes.neurons)  # noqa
                if window >= M:  # every token's truncated sum at t_lo, then the candidates'
                    trunc_MxD = product(lo_MxF)
                    base_of = lambda rows: trunc_MxD[rows]  # noqa: E731
                else:  # only the candidates' tokens, chunk by chunk
                    base_of = lambda rows: product(lo_MxF[rows])  # noqa: E731
                delta = _token_deltas(row, ok, a_W, col, inv_M[row], w_full_FxD, base_of, axes.tokens)
                e, ok, delta = compact(window, *(_gather(x, axes.tokens) for x in (e, ok, delta)))
                return Candidates(e, delta, ok, jnp.float32(jnp.inf))

            def fallback(t_lo, t_hi):
                mag_MxF = layer_magnitudes(layer)
                t_safe = jnp.min(jnp.where(active_at(mag_MxF, t_lo), mag_MxF, jnp.inf))
                return Candidates(jnp.full((window,), jnp.inf), jnp.zeros((window,), jnp.float32),
                                  jnp.zeros((window,), bool), t_safe if not axes.every else lax.pmin(t_safe, axes.every))

            return lax.map(lambda x: lax.cond(x[2], candidates, fallback, x[0], x[1]), (t_lo_K, t_hi_K, closed_K))

        return lax.map(one_layer, (*_layers(a_LxMxF, w_out_LxFxD, inv_LxM), t_lo_LxK, t_hi_LxK, closed_LxK))

    return run_sharded(placement, kernel, ("scores", "w_out", "tokens", "layer_tokens", "rep", "rep", "rep"), P(),
                    a, w_out_LxFxD, real, inv, t_lo_LxK, t_hi_LxK, closed_LxK)


def merge_candidates(block_c: Candidates, window: int) -> Candidates:
    """Blocks' candidates (nb, L, K, W) → (L, K, W): the window smallest ok ones."""
    move = lambda x: jnp.moveaxis(x, 0, -2).reshape(x.shape[1:3] + (-1,))  # noqa: E731
    e, ok, delta = jax.vmap(jax.vmap(functools.partial(compact, window)))(
        move(block_c.e_W), move(block_c.ok_W), move(block_c.delta_W))
    return Candidates(e, delta, ok, jnp.min(block_c.t_safe, axis=0))

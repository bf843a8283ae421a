"""The XLA block gathers: `W[bidx]` reads K contiguous b×d slabs of a (F/b, b, d) table.

With `chunk` > 0 (neurons) the blocks are read `chunk // b` at a time inside a scan, so a
slab group is multiplied while it sits in cache and no K·b×d copy is written; at b = 1
these are the decode FFN's single-neuron gathers (`infer.gathered.sparse_ffn`). The slabs are
multiplied as one (P·b, d) matrix: on XLA:CPU a batched "kbd,nd->nkb" contraction of the
same numbers is ~15× slower.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _slabs(w_GxBxD: Array, bidx_K: Array) -> Array:
    return w_GxBxD.at[bidx_K].get(mode="promise_in_bounds")


def _rows(w_GxBxD: Array, bidx_K: Array) -> Array:
    """The rows of blocks `bidx_K`, (K·b, d); a 2-D table (`_table`) is gathered by row."""
    if w_GxBxD.ndim == 2:
        return w_GxBxD.at[bidx_K].get(mode="promise_in_bounds")
    return _slabs(w_GxBxD, bidx_K).reshape(-1, w_GxBxD.shape[2])


def _table(w_GxBxD: Array) -> Array:
    """Blocks of b = 1 (single neurons) as the (F, d) row table, reshaped before any scan:
    inside a scan body XLA:CPU copies the (F, 1, d) view every step (17× slower)."""
    return w_GxBxD.reshape(-1, w_GxBxD.shape[2]) if w_GxBxD.shape[1] == 1 else w_GxBxD


def _up(x_NxD, w_GxBxD, bidx_K, gate_GxBxD, act):
    h_NxKb = jnp.einsum("fd,nd->nf", _rows(w_GxBxD, bidx_K), x_NxD)
    if gate_GxBxD is not None:
        return act(h_NxKb, jnp.einsum("fd,nd->nf", _rows(gate_GxBxD, bidx_K), x_NxD))
    return act(h_NxKb) if act is not None else h_NxKb


def _groups(bidx_K: Array, per: int) -> Array:
    return jnp.pad(bidx_K, (0, -bidx_K.shape[0] % per)).reshape(-1, per)


def block_up(x_NxD, w_GxBxD, bidx_K, *, gate_GxBxD=None, act=None, chunk: int = 0) -> Array:
    b = w_GxBxD.shape[1]
    per = max(chunk // b, 1)
    k = bidx_K.shape[0]
    w, gate = _table(w_GxBxD), None if gate_GxBxD is None else _table(gate_GxBxD)
    if chunk <= 0 or k <= per:
        return _up(x_NxD, w, bidx_K, gate, act)
    _, h = jax.lax.scan(lambda _, i: (None, _up(x_NxD, w, i, gate, act)), None, _groups(bidx_K, per))
    return jnp.moveaxis(h, 0, 1).reshape(x_NxD.shape[0], -1)[:, :k * b]


def block_down(a_NxK, w_GxBxD, bidx_K, *, chunk: int = 0) -> Array:
    n, b = a_NxK.shape[0], w_GxBxD.shape[1]
    k = bidx_K.shape[0]
    per = max(chunk // b, 1)
    d, w_GxBxD = w_GxBxD.shape[2], _table(w_GxBxD)
    if chunk <= 0 or k <= per:
        return a_NxK @ _rows(w_GxBxD, bidx_K)
    a_CxNxPxb = jnp.moveaxis(jnp.pad(a_NxK.reshape(n, k, b), ((0, 0), (0, -k % per), (0, 0)))
                             .reshape(n, -1, per, b), 1, 0)

    def body(y_NxD, ia):
        return y_NxD + ia[1].reshape(n, -1) @ _rows(w_GxBxD, ia[0]), None

    y_NxD, _ = jax.lax.scan(body, jnp.zeros((n, d), a_NxK.dtype), (_groups(bidx_K, per), a_CxNxPxb))
    return y_NxD

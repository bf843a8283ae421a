"""The XLA block gathers: `W[bidx]` reads K contiguous b×d slabs of a (F/b, b, d) table.

With `chunk` > 0 (neurons) the blocks are read `chunk // b` at a time inside a scan, so a
slab group is multiplied while it sits in cache and no K·b×d copy is written; at b = 1
these are the decode FFN's single-neuron gathers (`infer.ffn.sparse_ffn`). The slabs are
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
    return _slabs(w_GxBxD, bidx_K).reshape(-1, w_GxBxD.shape[2])


def _up(x_NxD, w_GxBxD, bidx_K, gate_GxBxD, act):
    h_NxKb = jnp.einsum("fd,nd->nf", _rows(w_GxBxD, bidx_K), x_NxD)
    if gate_GxBxD is not None:
        return act(h_NxKb, jnp.einsum("fd,nd->nf", _rows(gate_GxBxD, bidx_K), x_NxD))
    return act(h_NxKb) if act is not None else h_NxKb


def _groups(bidx_K: Array, per: int) -> Array:
    return jnp.pad(bidx_K, (0, -bidx_K.shape[0] % per)).reshape(-1, per)


def block_up(x_NxD, w_GxBxD, bidx_K, *, gate_GxBxD=None, act=None, chunk: int = 0) -> Array:
    per = max(chunk // w_GxBxD.shape[1], 1)
    k = bidx_K.shape[0]
    if chunk <= 0 or k <= per:
        return _up(x_NxD, w_GxBxD, bidx_K, gate_GxBxD, act)
    _, h = jax.lax.scan(lambda _, i: (None, _up(x_NxD, w_GxBxD, i, gate_GxBxD, act)), None, _groups(bidx_K, per))
    return jnp.moveaxis(h, 0, 1).reshape(x_NxD.shape[0], -1)[:, :k * w_GxBxD.shape[1]]


def block_down(a_NxK, w_GxBxD, bidx_K, *, chunk: int = 0) -> Array:
    n, b = a_NxK.shape[0], w_GxBxD.shape[1]
    k = bidx_K.shape[0]
    per = max(chunk // b, 1)
    if chunk <= 0 or k <= per:
        return a_NxK @ _rows(w_GxBxD, bidx_K)
    a_CxNxPxb = jnp.moveaxis(jnp.pad(a_NxK.reshape(n, k, b), ((0, 0), (0, -k % per), (0, 0)))
                             .reshape(n, -1, per, b), 1, 0)

    def body(y_NxD, ia):
        return y_NxD + ia[1].reshape(n, -1) @ _rows(w_GxBxD, ia[0]), None

    y_NxD, _ = jax.lax.scan(body, jnp.zeros((n, w_GxBxD.shape[2]), a_NxK.dtype), (_groups(bidx_K, per), a_CxNxPxb))
    return y_NxD

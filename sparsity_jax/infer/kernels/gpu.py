"""Pallas GPU kernels (Triton lowering) of the block gathers.

Triton has no scalar prefetch: the block indices are an ordinary input and each program
loads its slab with a dynamic slice of the (F, d) table, `w[pl.ds(bidx[k]·b, b), :]`
(b contiguous rows). `block_up`: one program per block, the product as a broadcast
multiply-reduce (tl.dot needs every side ≥ 16; decode has N ≤ 16 rows). `block_down`:
the row-contiguous AXPY of PowerInfer, one program per `tile` columns of d looping over
the K blocks, so no two programs write the same output (no atomics). N is padded to a
power of two (Triton's block shapes) and cut back.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

Array = jax.Array


def _pad_rows(x: Array) -> Array:
    n = x.shape[0]
    return jnp.pad(x, ((0, pl.next_power_of_2(n) - n),) + ((0, 0),) * (x.ndim - 1))


def _up_kernel(idx_ref, x_ref, w_ref, *rest, b, act, gated):
    o_ref = rest[-1]
    k = pl.program_id(0)
    rows = pl.ds(idx_ref[k] * b, b)
    x = x_ref[...].astype(jnp.float32)[:, None, :]
    h = jnp.sum(x * w_ref[rows, :].astype(jnp.float32)[None], axis=-1)
    if gated:
        h = act(h, jnp.sum(x * rest[0][rows, :].astype(jnp.float32)[None], axis=-1))
    elif act is not None:
        h = act(h)
    o_ref[k] = h.astype(o_ref.dtype)


def block_up(x_NxD, w_GxBxD, bidx_K, *, gate_GxBxD=None, act=None, interpret: bool = False) -> Array:
    n = x_NxD.shape[0]
    g, b, d = w_GxBxD.shape
    k = bidx_K.shape[0]
    gated = gate_GxBxD is not None
    xp = _pad_rows(x_NxD)
    flat = [w_GxBxD.reshape(g * b, d)] + ([gate_GxBxD.reshape(g * b, d)] if gated else [])
    out = pl.pallas_call(
        functools.partial(_up_kernel, b=b, act=act, gated=gated), grid=(k,),
        out_shape=jax.ShapeDtypeStruct((k, xp.shape[0], b), x_NxD.dtype), interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
    )(bidx_K.astype(jnp.int32), xp, *flat)
    return jnp.moveaxis(out[:, :n], 0, 1).reshape(n, k * b)


def _down_kernel(idx_ref, a_ref, w_ref, o_ref, *, b, k, tile):
    j = pl.program_id(0)
    cols = pl.ds(j * tile, tile)

    def body(i, acc):
        a = a_ref[i].astype(jnp.float32)  # (N, b)
        w = w_ref[pl.ds(idx_ref[i] * b, b), cols].astype(jnp.float32)  # (b, tile)
        return acc + jnp.sum(a[:, :, None] * w[None], axis=1)

    o_ref[:, cols] = jax.lax.fori_loop(0, k, body, jnp.zeros(o_ref[:, cols].shape, jnp.float32)).astype(o_ref.dtype)


def block_down(a_NxK, w_GxBxD, bidx_K, *, interpret: bool = False, tile: int = 128) -> Array:
    n = a_NxK.shape[0]
    g, b, d = w_GxBxD.shape
    k = bidx_K.shape[0]
    tile = min(tile, d)
    if d % tile:
        raise ValueError(f"d={d} must be a multiple of the column tile {tile}")
    a_KxNxb = _pad_rows(jnp.moveaxis(a_NxK.reshape(n, k, b), 1, 0).swapaxes(0, 1)).swapaxes(0, 1)
    out = pl.pallas_call(
        functools.partial(_down_kernel, b=b, k=k, tile=tile), grid=(d // tile,),
        out_shape=jax.ShapeDtypeStruct((a_KxNxb.shape[1], d), a_NxK.dtype), interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
    )(bidx_K.astype(jnp.int32), a_KxNxb, w_GxBxD.reshape(g * b, d))
    return out[:n]

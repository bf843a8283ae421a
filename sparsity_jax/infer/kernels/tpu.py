"""Pallas TPU kernels of the block gathers: the block indices arrive by scalar prefetch.

`pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1)` puts `bidx_K` in SMEM before the
grid runs, so each weight BlockSpec's index map reads `bidx[k]` and the pipeline DMAs
block k's b×d slab (contiguous in HBM) while block k − 1 is multiplied. Every block
shape is (b, d), (N, d) or (N, b) with its last two dimensions equal to the array's
(Mosaic's tiling rule). Grid step k of `block_up` writes output block k (parallel);
`block_down` accumulates all K steps into one resident (N, d) output block, so its grid
axis is "arbitrary" (sequential).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

Array = jax.Array
NT = (((1,), (1,)), ((), ()))  # x (N, d) · w (b, d)ᵀ


def _up_kernel(idx_ref, x_ref, w_ref, *rest, act, gated):
    del idx_ref
    o_ref = rest[-1]
    x = x_ref[...].astype(jnp.float32)
    h = jax.lax.dot_general(x, w_ref[...].astype(jnp.float32), NT, preferred_element_type=jnp.float32)
    if gated:
        h = act(h, jax.lax.dot_general(x, rest[0][...].astype(jnp.float32), NT, preferred_element_type=jnp.float32))
    elif act is not None:
        h = act(h)
    o_ref[...] = h.astype(o_ref.dtype)


def block_up(x_NxD, w_GxBxD, bidx_K, *, gate_GxBxD=None, act=None, interpret: bool = False) -> Array:
    n, d = x_NxD.shape
    b = w_GxBxD.shape[1]
    k = bidx_K.shape[0]
    gated = gate_GxBxD is not None
    slab = pl.BlockSpec((None, b, d), lambda i, idx: (idx[i], 0, 0))
    spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(k,),
        in_specs=[pl.BlockSpec((n, d), lambda i, idx: (0, 0)), slab] + ([slab] if gated else []),
        out_specs=pl.BlockSpec((None, n, b), lambda i, idx: (i, 0, 0)))
    out = pl.pallas_call(
        functools.partial(_up_kernel, act=act, gated=gated), grid_spec=spec,
        out_shape=jax.ShapeDtypeStruct((k, n, b), x_NxD.dtype), interpret=interpret,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
    )(bidx_K.astype(jnp.int32), x_NxD, w_GxBxD, *([gate_GxBxD] if gated else []))
    return jnp.moveaxis(out, 0, 1).reshape(n, k * b)


def _down_kernel(idx_ref, a_ref, w_ref, o_ref, acc_ref):
    del idx_ref

    @pl.when(pl.program_id(0) == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] += jnp.dot(a_ref[...].astype(jnp.float32), w_ref[...].astype(jnp.float32),
                            preferred_element_type=jnp.float32)

    @pl.when(pl.program_id(0) == pl.num_programs(0) - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def block_down(a_NxK, w_GxBxD, bidx_K, *, interpret: bool = False) -> Array:
    n = a_NxK.shape[0]
    _, b, d = w_GxBxD.shape
    k = bidx_K.shape[0]
    a_KxNxb = jnp.moveaxis(a_NxK.reshape(n, k, b), 1, 0)
    spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(k,),
        in_specs=[pl.BlockSpec((None, n, b), lambda i, idx: (i, 0, 0)),
                  pl.BlockSpec((None, b, d), lambda i, idx: (idx[i], 0, 0))],
        out_specs=pl.BlockSpec((n, d), lambda i, idx: (0, 0)),
        scratch_shapes=[pltpu.VMEM((n, d), jnp.float32)])
    return pl.pallas_call(
        _down_kernel, grid_spec=spec, out_shape=jax.ShapeDtypeStruct((n, d), a_NxK.dtype), interpret=interpret,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
    )(bidx_K.astype(jnp.int32), a_KxNxb, w_GxBxD)

"""Gathered FFN projections over contiguous neuron blocks (issue 22).

The decode FFN reads whole blocks of b neurons: each table is viewed as (F/b, b, d) and
a step reads the K blocks of `bidx_K`. Two products, in three implementations picked by
`kernel` ("auto" = the backend's: Pallas TPU on TPU, Pallas GPU on GPU, XLA elsewhere):

  up     h = act(x · W_up[blocks]ᵀ [, x · W_gate[blocks]ᵀ])  → (N, K·b)
  down   y = a · W_out[blocks]  (row-contiguous AXPY over the chosen rows) → (N, d)

`xla.py` is the reference and the CPU path; `tpu.py` streams each block by scalar
prefetch of the block indices (`PrefetchScalarGridSpec`); `gpu.py` is a Triton-lowered
`pallas_call` that loads each block's rows by a dynamic slice. Both Pallas kernels run
in interpret mode on CPU (`interpret=True`), which is how the tests check them.
"""
from __future__ import annotations

import jax

from sparsity_jax.infer.kernels import xla

KERNELS = ("auto", "xla", "tpu", "gpu")


def resolve(kernel: str) -> str:
    """The implementation "auto" means on this process's default backend."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    return {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(jax.default_backend(), "xla")


def _pallas(impl: str):
    """The Pallas kernel module of "tpu" or "gpu" (imported on first use)."""
    # local: each loads its Pallas backend (Mosaic TPU, Triton GPU), only where it runs
    if impl == "tpu":
        from sparsity_jax.infer.kernels import tpu as mod
    else:
        from sparsity_jax.infer.kernels import gpu as mod
    return mod


def block_up(x_NxD, w_GxBxD, bidx_K, *, gate_GxBxD=None, act=None, kernel: str = "auto", interpret: bool = False,
             chunk: int = 0):
    """act(x · W[blocks]ᵀ) (N, K·b); with `gate_GxBxD`, act(h_up, h_gate) (gated); `act` None: no activation."""
    impl = resolve(kernel)
    if impl == "xla":
        return xla.block_up(x_NxD, w_GxBxD, bidx_K, gate_GxBxD=gate_GxBxD, act=act, chunk=chunk)
    return _pallas(impl).block_up(x_NxD, w_GxBxD, bidx_K, gate_GxBxD=gate_GxBxD, act=act, interpret=interpret)


def block_down(a_NxK, w_GxBxD, bidx_K, *, kernel: str = "auto", interpret: bool = False, chunk: int = 0):
    """a · W[blocks] (N, d), a holding K·b columns (block k's b neurons at k·b … k·b + b − 1)."""
    impl = resolve(kernel)
    if impl == "xla":
        return xla.block_down(a_NxK, w_GxBxD, bidx_K, chunk=chunk)
    return _pallas(impl).block_down(a_NxK, w_GxBxD, bidx_K, interpret=interpret)

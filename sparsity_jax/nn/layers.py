"""Small building blocks: logically-annotated parameters, RMSNorm, RoPE.

Every parameter carries its logical axis names as the variable metadata `axes`
(e.g. ('embed', 'mlp')); `sparsity_jax.runtime.sharding` maps them to mesh axes with one
rule table. The names are plain metadata so that creating a model never needs a mesh.
Activations are constrained to logical axes with `constrain`, a no-op unless a caller
(`runtime.sharding.activation_sharding`) installed a mesh's rules for the trace.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Initializer = Callable[..., Array]

INITIALIZERS: dict[str, Callable[[float], Initializer]] = {
    "lecun_normal": lambda std: nnx.initializers.lecun_normal(),
    "he_normal": lambda std: nnx.initializers.he_normal(),
    "xavier_uniform": lambda std: nnx.initializers.xavier_uniform(),
    "normal": lambda std: nnx.initializers.normal(std),
}


# (x, logical axes) -> x constrained; None: no mesh, every constraint is the identity
_CONSTRAIN: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("constrain", default=None)


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """`x` constrained to its logical `axes` (e.g. ('activation_batch', 'activation_length',
    'activation_embed')) by the rules installed with `constraining`; the identity otherwise."""
    fn = _CONSTRAIN.get()
    return x if fn is None else fn(x, tuple(axes))


@contextlib.contextmanager
def constraining(fn: Callable[[Array, tuple], Array] | None) -> Iterator[None]:
    """Installs `fn(x, axes) -> x` as the activation constraint while a function is traced."""
    token = _CONSTRAIN.set(fn)
    try:
        yield
    finally:
        _CONSTRAIN.reset(token)


def get_initializer(name: str, std: float = 0.02) -> Initializer:
    """Kernel initialiser by name (`normal` uses `std`)."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; choose one of {', '.join(INITIALIZERS)}")
    return INITIALIZERS[name](std)


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype=jnp.float32,
) -> nnx.Param:
    """A parameter of `shape` with logical axis names `axes` (one per dimension)."""
    assert len(axes) == len(shape), (shape, axes)
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), axes=tuple(axes))


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm with a learned scale; statistics in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=("embed",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x_BxTxD: Array) -> Array:
        x32 = x_BxTxD.astype(jnp.float32)
        ms_BxTx1 = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(ms_BxTx1 + self.eps) * self.scale[...].astype(jnp.float32)
        return y.astype(self.dtype)


def apply_rope(x_BxTxHxK: Array, positions_BxT: Array, theta: float = 10000.0) -> Array:
    """Rotary position embedding (rotate-half form) at integer `positions`.

    Positions restart at 0 in every packed segment, so packed documents do not see each
    other's offsets.
    """
    head_dim = x_BxTxHxK.shape[-1]
    half = head_dim // 2
    freq_K2 = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BxTxK2 = positions_BxT[..., None].astype(jnp.float32) * freq_K2
    sin = jnp.sin(angle_BxTxK2)[:, :, None, :]
    cos = jnp.cos(angle_BxTxK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)

"""Small building blocks: logically-annotated parameters, RMSNorm, RoPE.

Every parameter carries its logical axis names as the variable metadata `axes`
(e.g. ('embed', 'mlp')); `sparsity_jax.devices.sharding` maps them to mesh axes with one
rule table. The names are plain metadata so that creating a model never needs a mesh.
Activations are constrained to logical axes with `constrain`, a no-op unless a caller
(`devices.sharding.activation_sharding`) installed a mesh's rules for the trace.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
    """Root-mean-square layer norm with a learned scale; statistics in float32.

    y = x / √(mean(x²) + eps) · (offset + scale): offset 0 (scale starts at 1) is the
    Llama form, offset 1 (scale starts at 0) Gemma's (1 + w). `axes` names the scale's
    logical axis (('embed',) for the model width, (None,) for a head's q/k norm)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                 offset: float = 0.0, axes: tuple = ("embed",)):
        self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype), axes=axes)
        self.eps = eps
        self.offset = offset
        self.dtype = dtype

    def __call__(self, x_BxTxD: Array) -> Array:
        x32 = x_BxTxD.astype(jnp.float32)
        ms_BxTx1 = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        w = self.scale[...].astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(ms_BxTx1 + self.eps) * (w if self.offset == 0 else self.offset + w)
        return y.astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: str = "none", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_len: int = 8192) -> Array:
    """RoPE inverse frequencies θ^(−2i/K), i < K/2, float32, with an optional scaling:
    `linear` (position interpolation, Chen et al. 2023: every frequency / factor) or
    `llama3` (Llama 3.1: wavelengths above original_max_len / low_freq_factor divided by
    factor, below original_max_len / high_freq_factor kept, a linear blend in between)."""
    half = head_dim // 2
    freq = theta ** (-np.arange(half, dtype=np.float64) / half)
    if scaling == "linear":
        freq = freq / factor
    elif scaling == "llama3":
        wavelen = 2 * np.pi / freq
        low_wavelen, high_wavelen = original_max_len / low_freq_factor, original_max_len / high_freq_factor
        scaled = np.where(wavelen > low_wavelen, freq / factor, freq)
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        freq = np.where(medium, blended, scaled)
    elif scaling != "none":
        raise ValueError(f"unknown RoPE scaling {scaling!r}; choose none, linear or llama3")
    return jnp.asarray(freq.astype(np.float32))


def default_frequencies(head_dim: int, theta: float) -> Array:
    """The unscaled RoPE inverse frequencies θ^(−2i/K), i < K/2, computed in float32."""
    half = head_dim // 2
    return theta ** (-jnp.arange(half, dtype=jnp.float32) / half)


def apply_rope(x_BxTxHxK: Array, positions_BxT: Array, theta: float = 10000.0, freq_K2: Array | None = None) -> Array:
    """Rotary position embedding (rotate-half form, as Hugging Face's Llama) at integer
    `positions`; `freq_K2` (`rope_frequencies`) replaces the unscaled θ^(−2i/K).

    Positions restart at 0 in every packed segment, so packed documents do not see each
    other's offsets.
    """
    if freq_K2 is None:
        freq_K2 = default_frequencies(x_BxTxHxK.shape[-1], theta)
    angle_BxTxK2 = positions_BxT[..., None].astype(jnp.float32) * freq_K2
    sin = jnp.sin(angle_BxTxK2)[:, :, None, :]
    cos = jnp.cos(angle_BxTxK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)

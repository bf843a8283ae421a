"""FFN activation functions and the neuron decomposition they induce.

ReLU² Wins §3 / Sparsing Law §2.2: for a non-gated FFN the activation score of neuron i
is a_i = σ(W_in,i · x); for a gated FFN a_i = σ(W_gate,i · x) · (W_in,i · x). In both
cases FFN(x) = a @ W_out, so a (B, T, F) carries the whole neuron decomposition.

Activations with exact zeros (relu, relu2, fatrelu, reglu, fatreglu, relu2glu, drelu)
give hidden-unit masks `a != 0`; the others (silu, gelu, swiglu, geglu) need a magnitude
threshold. The gated ReLU family of pretrained models (`sparsity_jax.hf`): reglu
(ReluLLaMA, MiniCPM-S), fatreglu (FATReLU on the gate, ProSparse), relu2glu (ReLU² on the
gate) and drelu (TurboSparse's dReLU: ReLU on both the gate and the up projection,
a_i = relu(W_gate,i · x) · relu(W_in,i · x)); geglu uses the tanh form of GELU (Gemma).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def relu2(x: Array) -> Array:
    """Squared ReLU, relu(x)² (ReLU² Wins, Primer)."""
    r = jax.nn.relu(x)
    return r * r


def fatrelu(x: Array, eps: float) -> Array:
    """FATReLU: x · 1[x > ε] (a thresholded ReLU; ε = 0 is plain ReLU)."""
    return jnp.where(x > eps, x, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Activation:
    """One FFN activation: σ and whether the FFN is gated (σ applies to the gate)."""

    name: str
    fn: Callable[..., Array]
    gated: bool
    exact_zeros: bool  # σ(x) == 0 on a set of positive measure (masks are `a != 0`)
    up_relu: bool = False  # gated only: ReLU on the up projection too (dReLU)

    def up(self, h: Array) -> Array:
        """The up projection's contribution W_in x of a gated FFN (ReLU'd for dReLU)."""
        return jax.nn.relu(h) if self.up_relu else h


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", jax.nn.relu, gated=False, exact_zeros=True),
    "relu2": Activation("relu2", relu2, gated=False, exact_zeros=True),
    "silu": Activation("silu", jax.nn.silu, gated=False, exact_zeros=False),
    "gelu": Activation("gelu", jax.nn.gelu, gated=False, exact_zeros=False),
    "fatrelu": Activation("fatrelu", fatrelu, gated=False, exact_zeros=True),
    "swiglu": Activation("swiglu", jax.nn.silu, gated=True, exact_zeros=False),
    "reglu": Activation("reglu", jax.nn.relu, gated=True, exact_zeros=True),
    "geglu": Activation("geglu", jax.nn.gelu, gated=True, exact_zeros=False),
    "fatreglu": Activation("fatreglu", fatrelu, gated=True, exact_zeros=True),
    "relu2glu": Activation("relu2glu", relu2, gated=True, exact_zeros=True),
    "drelu": Activation("drelu", jax.nn.relu, gated=True, exact_zeros=True, up_relu=True),
}


def get_activation(name: str) -> Activation:
    """Looks up an activation by name; raises ValueError naming the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]

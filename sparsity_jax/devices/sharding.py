"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters carry logical axis names (`axes` metadata, see `nn.layers.param`); activations
and the KV cache have their own (`activation_*`, `cache_*`, as MaxText), placed by
`logical_sharding` / `constrain`; `with_activation_sharding` makes the model's own
constraints (`nn.layers.constrain`, no-ops without a mesh) use this table. Mesh axes: `data` (pure data parallel), `fsdp` (data parallel
with parameters sharded along 'embed', as MaxText's fsdp), `tensor` (Megatron-style
sharding of 'mlp', 'heads', 'vocab'). A dimension that a mesh axis does not divide stays
replicated along that axis, so any model runs on any mesh (at some memory cost).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sparsity_jax.nn import layers

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
    "expert": (),
    "layers": (),  # the leading axis of stacked (scanned) blocks: every device holds all layers' slices
    # activations (MaxText's names): batch-major, the feature axes as their parameters'
    "activation_batch": ("data", "fsdp"),
    "activation_length": (),
    "activation_embed": (),
    "activation_mlp": ("tensor",),
    "activation_heads": ("tensor",),
    "activation_vocab": ("tensor",),
    # the KV cache of decoding: (batch, cache slot, KV head, head dim)
    "cache_batch": ("data", "fsdp"),
    "cache_sequence": (),
    "cache_heads": ("tensor",),
    "cache_kv": (),
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (= the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive with at most one -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh fsdp×tensor×data={known} does not divide the {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data×fsdp×tensor = {math.prod(sizes)} but there are {len(devices)} devices; set mesh.data=-1 to fill"
        )
    dev = np.asarray(devices).reshape(sizes)
    return Mesh(dev, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for a value with logical `axes` (None: replicated); skips mesh axes
    that don't divide. A name missing from `LOGICAL_RULES` is a ValueError (a typo would
    otherwise replicate silently)."""
    unknown = [name for name in axes if name is not None and name not in LOGICAL_RULES]
    if unknown:
        raise ValueError(f"logical axes {unknown} are not in devices.sharding.LOGICAL_RULES")
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        chosen = []
        for mesh_axis in LOGICAL_RULES[name] if name else ():
            size = mesh.shape[mesh_axis]
            if mesh_axis in used or size == 1 or dim % (math.prod(mesh.shape[a] for a in chosen) * size):
                continue
            chosen.append(mesh_axis)
            used.add(mesh_axis)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return P(*spec)


def logical_sharding(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """NamedSharding of a value with logical `axes` on `mesh` (`logical_to_spec`)."""
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def constrain(x: jax.Array, axes: Sequence[str | None], mesh: Mesh | None) -> jax.Array:
    """`x` constrained to its logical `axes` inside a jitted function (no-op without a mesh
    or on one device), so activations are partitioned as the parameters are."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(axes, x.shape, mesh))


def with_activation_sharding(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` whose trace constrains the model's activations (`nn.layers.constrain`) to the
    mesh by `LOGICAL_RULES`; wrap a function before `jax.jit`."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with layers.constraining(lambda x, axes: constrain(x, axes, mesh)):
            return fn(*args, **kwargs)

    return traced


def param_shardings(abstract_params: nnx.State, mesh: Mesh) -> dict:
    """NamedShardings for a params State (Variables with `axes` metadata), as a pure dict."""
    def one(var):
        axes = var.get_metadata().get("axes") or (None,) * len(var.get_value().shape)
        return NamedSharding(mesh, logical_to_spec(axes, var.get_value().shape, mesh))

    shardings = jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch-major arrays sharded over the mesh axes of 'activation_batch' (data, fsdp),
    other dims replicated; the batch must divide (the settings check it)."""
    return NamedSharding(mesh, P(LOGICAL_RULES["activation_batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

"""Per-layer ↔ stacked blocks in saved states, so a run can switch `model.scan_layers`.

An unrolled model's parameters hold `blocks` as {0: block params, 1: …}; a scanned
model's hold one block whose every array has a leading layers axis (`nn.stack`).
`convert_blocks` rewrites every `blocks` subtree of a state (the parameters and every
parameter-shaped subtree of the optimizer state, found structurally, as
`ssd.convert.permute_state` does) into either layout, on arrays or on abstract
`ShapeDtypeStruct`s (a stacked leaf's sharding gets an unsharded leading axis, the
'layers' rule). `Checkpointer` restores through it, so a checkpoint saved in one layout
restores in the other.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P


def is_per_layer(blocks: Any) -> bool:
    """Whether a `blocks` subtree is one entry per layer (keys 0..L-1, or a list)."""
    if isinstance(blocks, (list, tuple)):
        return True
    return isinstance(blocks, dict) and bool(blocks) and all(str(k).isdigit() for k in blocks)


def blocks_stacked(tree: dict) -> bool | None:
    """Whether a state's (or parameters') `blocks` are stacked; None when it has none."""
    params = tree.get("params", tree) if isinstance(tree, dict) else None
    if not isinstance(params, dict) or "blocks" not in params:
        return None
    return not is_per_layer(params["blocks"])


def _resharded(x: jax.ShapeDtypeStruct, shape: tuple, spec: P | None) -> jax.ShapeDtypeStruct:
    sh = getattr(x, "sharding", None)
    sh = NamedSharding(sh.mesh, spec) if isinstance(sh, NamedSharding) and spec is not None else sh
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sh)


def _stack(*xs):
    x0 = xs[0]
    if isinstance(x0, jax.ShapeDtypeStruct):
        sh = getattr(x0, "sharding", None)
        spec = P(None, *sh.spec) if isinstance(sh, NamedSharding) else None
        return _resharded(x0, (len(xs),) + tuple(x0.shape), spec)
    return jnp.stack(xs)


def _slice(x, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):
        sh = getattr(x, "sharding", None)
        spec = P(*tuple(sh.spec)[1:]) if isinstance(sh, NamedSharding) else None
        return _resharded(x, tuple(x.shape[1:]), spec)
    return x[i]


def _convert(blocks: Any, stacked: bool) -> Any:
    if stacked == (not is_per_layer(blocks)):
        return blocks
    if stacked:
        keys = sorted(blocks, key=int) if isinstance(blocks, dict) else range(len(blocks))
        return jax.tree.map(_stack, *[blocks[k] for k in keys])
    n = jax.tree.leaves(blocks)[0].shape[0]
    return {i: jax.tree.map(lambda x, i=i: _slice(x, i), blocks) for i in range(n)}


def convert_blocks(tree: Any, stacked: bool) -> Any:
    """`tree` with every `blocks` subtree in the stacked (True) or per-layer layout."""
    if isinstance(tree, dict):
        return {k: _convert(v, stacked) if k == "blocks" else convert_blocks(v, stacked) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # optax states are named tuples
        return type(tree)(*[convert_blocks(v, stacked) for v in tree])
    if isinstance(tree, (list, tuple)):
        return type(tree)(convert_blocks(v, stacked) for v in tree)
    return tree


def placed(tree: Any, abstract: Any) -> Any:
    """Arrays of `tree` put on the shardings of the matching `abstract` leaves."""
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding) if getattr(a, "sharding", None) else x,
                        tree, abstract)

"""Running the blocks: a Python loop (unrolled) or one `lax.scan` over parameters stacked
on a leading `layers` axis, each block optionally rematerialised.

Stacking (`stack`) turns L blocks into one block whose every parameter has a leading
axis of size L, its logical axes prefixed with 'layers' (never sharded); `layer` is the
view of block i (the slices, as a module). `run` applies a pure layer function to every
block in turn, with per-layer inputs (sparsity settings, PLD draws) and per-layer
outputs (the recorded intermediates), stacked (L, ...) either way, so scanned and
unrolled models compute the same thing. Scanning compiles the block once instead of L
times (MaxText's `scan_layers`).

Remat policies (`REMAT_POLICIES`, as MaxText's `remat_policy`): `none` keeps every
intermediate of a block for the backward pass; `full` keeps only the block's input and
recomputes the rest; `dots` keeps the outputs of matmuls without batch dimensions (the
projections; attention scores are recomputed), `jax.checkpoint_policies.
dots_with_no_batch_dims_saveable`; `ffn` keeps only the FFN pre-activations, the named
checkpoints `nn.ffn.PRE_ACTIVATION_NAMES`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity_jax.nn.ffn import PRE_ACTIVATION_NAMES

STACK_AXIS = "layers"
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "ffn": jax.checkpoint_policies.save_only_these_names(*PRE_ACTIVATION_NAMES),
    "full": jax.checkpoint_policies.nothing_saveable,
}
LayerFn = Callable[[Callable[[], nnx.Module], jax.Array, Any], tuple[jax.Array, dict]]


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _with_axes(v: nnx.Variable, value, axes) -> nnx.Variable:
    return v.replace(value) if axes is None else v.replace(value, axes=tuple(axes))


def stack(blocks: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the blocks' structure whose variables are the blocks' stacked on a
    leading axis of size L (logical axis 'layers')."""
    graphdef = nnx.graphdef(blocks[0])

    def one(*vs):
        axes = vs[0].get_metadata().get("axes")
        return _with_axes(vs[0], jnp.stack([v.get_value() for v in vs]), None if axes is None else (STACK_AXIS, *axes))

    return nnx.merge(graphdef, jax.tree.map(one, *[nnx.state(b) for b in blocks], is_leaf=_is_var))


def layer(stacked: nnx.Module, i) -> nnx.Module:
    """Block i of a stacked module (a new module over the slices; `i` may be traced)."""
    graphdef, state = nnx.split(stacked)

    def one(v):
        axes = v.get_metadata().get("axes")
        return _with_axes(v, v.get_value()[i], None if axes is None else axes[1:])

    return nnx.merge(graphdef, jax.tree.map(one, state, is_leaf=_is_var))


def per_layer(blocks, num_layers: int) -> list[nnx.Module]:
    """The blocks one by one: the list itself, or the views of a stacked module."""
    return list(blocks) if isinstance(blocks, (list, nnx.List)) else [layer(blocks, i) for i in range(num_layers)]


def _checkpointed(fn: Callable, remat: str, scanned: bool) -> Callable:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r} is not one of {', '.join(REMAT_POLICIES)}")
    if remat == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)


def run(blocks, x, layer_xs: list, fn: LayerFn, *, remat: str = "none") -> tuple[jax.Array, dict]:
    """x ↦ fn(block_i, x, layer_xs[i]) for i = 0..L-1 → (x, the outputs stacked (L, ...));
    `fn` gets block i as a function that builds the module (call it where the module is
    used, e.g. inside a `lax.cond` branch: NNX modules belong to the trace that made them).

    `blocks`: a list (unrolled) or a stacked module (scanned with `lax.scan`; when the
    per-layer inputs differ in structure, e.g. one sparsity mode per layer, the views of
    the stacked blocks run one by one). `fn` must be pure in arrays (its outputs a dict
    of arrays of the same structure for every layer); `remat` names its policy."""
    def body(state, x, xs_i, graphdef):
        return fn(lambda: nnx.merge(graphdef, state), x, xs_i)

    n = len(layer_xs)
    structs = {jax.tree.structure(xs) for xs in layer_xs}
    if not isinstance(blocks, (list, nnx.List)) and len(structs) == 1:
        graphdef, state = nnx.split(blocks)
        step = _checkpointed(lambda st, x, xs_i: body(st, x, xs_i, graphdef), remat, scanned=True)
        stacked_xs = jax.tree.map(lambda *a: jnp.stack([jnp.asarray(v) for v in a]), *layer_xs)
        return jax.lax.scan(lambda x, inp: step(inp[0], x, inp[1]), x, (state, stacked_xs))
    outs = []
    for blk, xs_i in zip(per_layer(blocks, n), layer_xs):
        graphdef, state = nnx.split(blk)
        x, out = _checkpointed(lambda st, x, xs_i, g=graphdef: body(st, x, xs_i, g), remat, scanned=False)(
            state, x, xs_i)
        outs.append(out)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)

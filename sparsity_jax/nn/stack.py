"""Running the blocks: a Python loop (unrolled) or one `lax.scan` over parameters stacked
on a leading `layers` axis, each block optionally rematerialised.

Stacking (`stack`) turns L blocks into one block whose every parameter has a leading
axis of size L, its logical axes prefixed with 'layers' (never sharded). `run` applies a
pure layer function to every block in turn, with per-layer inputs (sparsity settings,
PLD draws, the KV cache, the decode FFN's arrays) and per-layer outputs (the recorded
intermediates, the updated cache), stacked (L, ...) either way, so scanned and unrolled
models compute the same thing. Scanning compiles the block once instead of L times
(MaxText's `scan_layers`), for training and decoding alike.

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
from flax import nnx, struct

from sparsity_jax.nn.ffn import PRE_ACTIVATION_NAMES

STACK_AXIS = "layers"
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "ffn": jax.checkpoint_policies.save_only_these_names(*PRE_ACTIVATION_NAMES),
    "full": jax.checkpoint_policies.nothing_saveable,
}
LayerFn = Callable[[Callable[[], nnx.Module], jax.Array, Any, Any], tuple[jax.Array, Any]]


@struct.dataclass
class Static:
    """A per-layer setting that is no array (a decode FFN's budgets): part of the tree
    structure, so layers whose values differ never share one scan."""

    value: Any = struct.field(pytree_node=False)


class PerLayer:
    """A per-layer input held as L separate pytrees (`run` gives layer i `items[i]`), not
    stacked: an unrolled model's layers then read their own buffers, where slicing a
    stacked (L, ...) array copies the slice on XLA:CPU (the decode FFN's tables: 6× slower
    decode steps, `bench/results/sparse_decode_issue26.txt`). A scan stacks them."""

    def __init__(self, items: Sequence[Any]):
        self.items = tuple(items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]

    def stacked(self) -> Any:
        return jax.tree.map(lambda *a: jnp.stack(a), *self.items)


def _is_per_layer(x) -> bool:
    return isinstance(x, PerLayer)


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


def _layer(stacked: nnx.Module, i: int) -> nnx.Module:
    """Block i of a stacked module (a new module over the slices)."""
    graphdef, state = nnx.split(stacked)

    def one(v):
        axes = v.get_metadata().get("axes")
        return _with_axes(v, v.get_value()[i], None if axes is None else axes[1:])

    return nnx.merge(graphdef, jax.tree.map(one, state, is_leaf=_is_var))


def _checkpointed(fn: Callable, remat: str, scanned: bool) -> Callable:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r} is not one of {', '.join(REMAT_POLICIES)}")
    if remat == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)


def run(blocks, x, fn: LayerFn, settings: list, xs: Any = None, *, remat: str = "none") -> tuple[jax.Array, Any]:
    """x ↦ fn(block_i, x, xs_i, settings[i]) for i = 0..L-1 → (x, the outputs stacked (L, ...)).

    `fn` gets block i as a function that builds the module (call it where the module is
    used, e.g. inside a `lax.cond` branch: NNX modules belong to the trace that made them).
    Per-layer inputs come two ways: `xs`, a pytree of arrays stacked on a leading L axis
    (the KV cache, the decode FFN's tables, PLD draws), of which layer i gets slice i
    (the scan's xs, or `[i]` unrolled), or of `PerLayer` sequences (item i); `settings`,
    a list of L small pytrees (sparsity settings, `Static` values), stacked into the scan
    when they share one tree structure.

    `blocks`: a list (unrolled) or a stacked module (one `lax.scan`; when the settings
    differ in structure, e.g. one sparsity mode per layer, the slices of the stacked blocks
    run one by one; `infer.decode` gives a scan's layers one shared budget tuple for that).
    `fn` must be pure in arrays, its outputs of one structure for every layer; `remat`
    names its policy."""
    def body(state, x, xs_i, set_i, graphdef):
        return fn(lambda: nnx.merge(graphdef, state), x, xs_i, set_i)

    if not isinstance(blocks, (list, nnx.List)) and len({jax.tree.structure(s) for s in settings}) == 1:
        graphdef, state = nnx.split(blocks)
        step = _checkpointed(lambda st, x, xs_i, set_i: body(st, x, xs_i, set_i, graphdef), remat, scanned=True)
        stacked = jax.tree.map(lambda *a: jnp.stack([jnp.asarray(v) for v in a]), *settings)
        xs = jax.tree.map(lambda a: a.stacked() if _is_per_layer(a) else a, xs, is_leaf=_is_per_layer)
        return jax.lax.scan(lambda x, inp: step(inp[0], x, inp[1], inp[2]), x, (state, xs, stacked))
    views = blocks if isinstance(blocks, (list, nnx.List)) else [_layer(blocks, i) for i in range(len(settings))]
    outs = []
    for i, (blk, set_i) in enumerate(zip(views, settings)):
        graphdef, state = nnx.split(blk)
        xs_i = jax.tree.map(lambda a: a[i], xs, is_leaf=_is_per_layer)
        x, out = _checkpointed(lambda st, x, xs_i, set_i, g=graphdef: body(st, x, xs_i, set_i, g), remat,
                               scanned=False)(state, x, xs_i, set_i)
        outs.append(out)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)

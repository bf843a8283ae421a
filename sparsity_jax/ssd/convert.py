"""Dense ↔ MoE conversion of a whole train state (SSD §4.2 "Transition between Sparse and
Dense").

Dense → sparse: `dense_to_moe` clusters each layer's neurons into N balanced experts and
permutes the state so each expert is a contiguous block. Sparse → dense: nothing to undo
— the experts' blocks *are* the dense kernels, and the neuron order simply stays permuted
(SSD: "concatenating the weight matrices of all experts"); drop the centres.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from sparsity_jax.errors import UserError
from sparsity_jax.nn.moe import centres_from_kernel
from sparsity_jax.ssd.kmeans import moefy_clustering, permutation_from_labels

Array = jax.Array
State = dict[str, Any]


@struct.dataclass
class Conversion:
    """Result of `dense_to_moe`: centres (L, N, d); labels, perms (L, F) int32.

    labels are in the input order (what the ARI monitor compares); new neuron j of layer
    l is old neuron perms[l, j]. In the converted order neuron j belongs to expert j // E,
    so the labels to warm-start the next conversion of the converted state are
    `block_labels`.
    """

    centres: Array
    labels: Array
    perms: Array


def ffn_params(params: dict) -> list[dict]:
    """The FFN parameter dicts of every block, in layer order (stacked blocks sliced)."""
    blocks = params["blocks"]
    if isinstance(blocks, dict) and "ffn" in blocks:  # stacked (scanned) blocks: (L, ...) arrays
        n = jax.tree.leaves(blocks["ffn"])[0].shape[0]
        return [jax.tree.map(lambda x, i=i: x[i], blocks["ffn"]) for i in range(n)]
    keys = sorted(blocks, key=int) if isinstance(blocks, dict) else range(len(blocks))
    return [blocks[k]["ffn"] for k in keys]


def centres_from_params(params: dict, num_experts: int) -> Array:
    """Router centres (L, N, d) of the current (already permuted) kernels (SSD Eq. 4).

    Recompute them before the next sparse phase if the kernels have moved.
    """
    return jnp.stack([centres_from_kernel(p["w_in"], num_experts) for p in ffn_params(params)])


def block_labels(d_ff: int, num_experts: int) -> Array:
    """(F,) expert of each neuron in converted order: j // (F/N)."""
    return jnp.arange(d_ff, dtype=jnp.int32) // (d_ff // num_experts)


def initial_labels(num_layers: int, d_ff: int, num_experts: int) -> Array:
    """(L, F) labels of the contiguous-block experts in every layer (`block_labels` per layer)."""
    return jnp.tile(block_labels(d_ff, num_experts)[None], (num_layers, 1))


def permute_params(params: dict, perms_LxF: Array) -> dict:
    """Params (or any params-shaped tree, e.g. Adam moments) with hidden units permuted."""

    def per_layer(ffn: dict, perm_F: Array) -> dict:
        axis = {"w_in": 1, "w_gate": 1, "w_out": 0}
        return {k: jnp.take(v, perm_F, axis=axis[k]) if k in axis else v for k, v in ffn.items()}

    blocks = params["blocks"]
    if isinstance(blocks, dict) and "ffn" in blocks:  # stacked (scanned) blocks
        return dict(params, blocks=dict(blocks, ffn=jax.vmap(per_layer)(blocks["ffn"], perms_LxF)))
    keys = sorted(blocks, key=int) if isinstance(blocks, dict) else range(len(blocks))
    new_blocks = {k: dict(blocks[k], ffn=per_layer(blocks[k]["ffn"], perms_LxF[i])) for i, k in enumerate(keys)}
    if not isinstance(blocks, dict):
        new_blocks = type(blocks)(new_blocks[i] for i in keys)
    return dict(params, blocks=new_blocks)


def permute_state(state: State, perms_LxF: Array) -> State:
    """A train state with every F-indexed array permuted:

      params   w_in / w_gate columns, w_out rows;
      opt_state every params-shaped sub-tree (AdamW mu and nu; found structurally, so any
               optax chain works without knowing its layout);
      units    the (L, F) hidden-unit tracking arrays, when the state has them.

    A permutation of the hidden units leaves the LM's function unchanged and commutes
    with AdamW (element-wise) and global-norm clipping (permutation invariant), so the
    converted state trains exactly like the original one in dense mode (and like K = N
    MoE mode).
    """
    structure = jax.tree.structure(state["params"])
    params_like = lambda node: jax.tree.structure(node) == structure  # noqa: E731

    opt_state = jax.tree.map(
        lambda node: permute_params(node, perms_LxF) if params_like(node) else node,
        state["opt_state"], is_leaf=params_like,
    )
    out = dict(state, params=permute_params(state["params"], perms_LxF), opt_state=opt_state)
    if "units" in state:
        shape = perms_LxF.shape
        out["units"] = {k: jnp.take_along_axis(v, perms_LxF, axis=1) if v.shape == shape else v
                        for k, v in state["units"].items()}
    return out


def dense_to_moe(
    state: State,
    num_experts: int,
    *,
    key: Array,
    prev_labels: Array | None = None,
    n_iter: int = 100,
    shardings: Any = None,
) -> tuple[State, Conversion]:
    """Converts a dense train state to MoE layout (SSD §4.2 dense→sparse).

    Per layer, cluster the neurons (rows of W_i, i.e. the columns of the Flax kernel w_in
    (d, F)) into N balanced groups with `moefy_clustering` (SSD Eq. 3: random init vs.
    warm start from the previous labels, lower WCSS wins), sort the neurons by cluster so
    expert n is the contiguous block [n·E, (n+1)·E), E = F/N, and apply that permutation
    to every F-indexed array of the state (`permute_state`). Router centres (Eq. 4) are
    then `centres_from_params` of the permuted params.

    Args:
      state: dict(step, params, opt_state, rng[, units]) with pure-dict params.
      num_experts: N, must divide d_ff.
      key: PRNG key for the random-init clustering (folded with the layer index).
      prev_labels: optional (L, F) labels in the *current* neuron order to warm-start
        from (after a previous conversion: `block_labels` per layer).
      n_iter: k-means iterations at most.
      shardings: optional state shardings (e.g. `Run.state_shardings`) to place the
        converted state on, so the jitted train step sees its expected layout.

    Returns:
      (converted state, Conversion(centres (L, N, d), labels (L, F), perms (L, F))).
    """
    kernels = [p["w_in"] for p in ffn_params(state["params"])]
    d_ff = kernels[0].shape[1]
    if num_experts < 1 or d_ff % num_experts:
        raise UserError(f"ssd num_experts={num_experts} must divide model.d_ff={d_ff}; pick a divisor of d_ff.")
    labels, perms = [], []
    for i, w_in_DxF in enumerate(kernels):
        prev = None if prev_labels is None else prev_labels[i]
        lab_F, _, _ = moefy_clustering(w_in_DxF.T, num_experts, key=jax.random.fold_in(key, i),
                                       prev_labels=prev, n_iter=n_iter)
        labels.append(lab_F)
        perms.append(permutation_from_labels(lab_F, num_experts))
    perms_LxF = jnp.stack(perms)
    new_state = permute_state(state, perms_LxF)
    if shardings is not None:
        new_state = jax.device_put(new_state, shardings)
    centres = centres_from_params(new_state["params"], num_experts)
    return new_state, Conversion(centres=centres, labels=jnp.stack(labels), perms=perms_LxF)

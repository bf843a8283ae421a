"""What predictors learn from: FFN inputs and active-neuron labels of a checkpoint's tokens.

Labels follow the magnitude definition of ReLU² §3: neuron i of layer l is active on a
token when it is active at t_l, the layer's threshold at a CETT (the exact search of
`search.thresholds`): ‖n_i‖ = |a_i|·‖W_out,i‖ ≥ t_l and > 0 (`nn.sparsify.active_at`:
the neurons the FFN's threshold mode computes), so models without exact zeros (SiLU,
SwiGLU) get meaningful labels; t_l = 0 gives a_i != 0 (DejaVu's labels, for ReLU-like
activations).
The same masks serve the hardware-affinity metrics (ReLU² §5.3).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sparsity_jax.errors import UserError
from sparsity_jax.nn.sparsify import Sparsify, active_at, magnitudes, out_norms
from sparsity_jax.runtime.forward import forward

Array = jax.Array
Batch = dict[str, Array]


def active_labels(a_LxxF: Array, out_norms_LxF: Array, threshold_L: Array) -> Array:
    """Bool (L, …, F): neuron i active at t_l in layer l (`active_at`)."""
    lead = (slice(None),) + (None,) * (a_LxxF.ndim - 2)
    mag_LxxF = magnitudes(a_LxxF, out_norms_LxF.astype(jnp.float32)[lead])
    return active_at(mag_LxxF, jnp.asarray(threshold_L, jnp.float32)[lead + (None,)])


@functools.partial(jax.jit, static_argnums=(0, 4))
def record_active(graphdef, params, batch: Batch, threshold_L: Array, with_inputs: bool = True):
    """One dense forward of `batch`: (FFN inputs (L, B, T, d) or None, active labels bool
    (L, B, T, F) at the per-layer thresholds), both sharded like the batch."""
    names = ("inputs", "scores") if with_inputs else ("scores",)
    _, rec = forward(graphdef, params, batch, Sparsify(), names)
    return rec.get("inputs"), active_labels(rec["scores"], out_norms(nnx.merge(graphdef, params).w_out()), threshold_L)


def to_host(x: Array) -> np.ndarray:
    """A global array as numpy on every process (gathered across processes when several)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class TokenSet(NamedTuple):
    """FFN inputs and labels of the real tokens of some batches, on the host."""

    x_LxNxD: np.ndarray  # float32
    labels_LxNxF: np.ndarray  # bool


def token_set(graphdef, params, batches: Sequence[Batch], threshold_L) -> TokenSet:
    """Inputs and labels of every real token (loss weight > 0) of `batches`, in order.

    Host memory: L·N·(4d + F) bytes for N real tokens."""
    t_L = jnp.asarray(threshold_L, jnp.float32)
    xs, labels = [], []
    for batch in batches:
        x_LxBxTxD, y_LxBxTxF = record_active(graphdef, params, batch, t_L)
        real_M = to_host(batch["loss_weights"]).reshape(-1) > 0
        num_layers = x_LxBxTxD.shape[0]
        xs.append(to_host(x_LxBxTxD).reshape(num_layers, real_M.size, -1)[:, real_M].astype(np.float32))
        labels.append(to_host(y_LxBxTxF).reshape(num_layers, real_M.size, -1)[:, real_M])
    if not xs or sum(x.shape[1] for x in xs) == 0:
        raise UserError("The batches hold no real token; pass more training batches.")
    return TokenSet(np.concatenate(xs, axis=1), np.concatenate(labels, axis=1))


def training_batches(run, workdir: str, num_batches: int, val: Sequence[Batch]) -> list[Batch]:
    """The first `num_batches` global TRAINING batches of the run's data (the data the
    checkpoint was trained on; the predictors are evaluated on the validation batches
    `val`). Where all of the text is validation (`--text`: no training split), the first
    `num_batches` of `val`: the predictors are then evaluated on the text they trained on."""
    from sparsity_jax import data  # imports TensorFlow: only where data is needed

    s = run.settings
    if s.data.all_validation:
        return list(val[:num_batches])
    it = data.get_batches(s.data, split="train", global_batch_size=s.train.global_batch_size,
                          seq_len=s.train.seq_len, process_index=jax.process_index(),
                          process_count=jax.process_count(), cache_dir=workdir, max_batches=num_batches)
    return [run.device_batch(b) for b in it]

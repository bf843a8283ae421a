"""Model-level CETT thresholds: the dense pass that feeds the searches, and sparse passes.

`dense_pass` runs the dense model once over the validation batches and caches what every
later search step needs (`DenseCache`); `thresholds_for_cett` / `cache_thresholds` give
exact per-layer thresholds for a target CETT (ReLU² §3) over all real validation tokens;
`sparse_pass` measures the loss and activation ratio with a `Sparsify` applied.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.threshold_search import PreparedSearch, find_prepared, find_threshold, prepare_search
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.train.step import forward

Array = jax.Array
Batch = dict[str, Array]


class DenseCache(NamedTuple):
    """One checkpoint's dense validation pass, reused by every search step."""

    a_LxNxF: Array  # activation scores of the real tokens, batches concatenated
    w_out_LxFxD: Array  # FFN output kernels
    ids_N: Array  # input token id of each real token
    loss: float  # dense token-weighted cross-entropy (nats)
    tokens: float  # real (loss-weighted) tokens


class CettThresholds(NamedTuple):
    """Per-layer result of `thresholds_for_cett`; every field (L,) float32 (numpy)."""

    threshold: np.ndarray  # skip neuron i where |a_i|·‖W_out,i‖ < threshold
    cett: np.ndarray  # realised CETT over all real validation tokens
    sparsity: np.ndarray  # fraction of real token×neuron pairs below the threshold


class SparseEval(NamedTuple):
    """A validation pass with neurons dropped."""

    loss: float
    activation_ratio: np.ndarray  # (L,) fraction of units with a != 0 after dropping, real tokens


def as_graph_params(model_or_pair: Any) -> tuple[Any, Any]:
    """(graphdef, params) from an `LM` instance or a (graphdef, params) pair."""
    if isinstance(model_or_pair, nnx.Module):
        return nnx.split(model_or_pair, nnx.Param)
    if isinstance(model_or_pair, (tuple, list)) and len(model_or_pair) == 2:
        return tuple(model_or_pair)
    raise UserError("Pass the model as an LM instance or a (graphdef, params) pair.")


# The jitted steps take the graphdef as a static argument, so each model structure
# compiles once (Sparsify arrays are traced, so new thresholds never recompile).
@functools.partial(jax.jit, static_argnums=0)
def _dense_step(graphdef, params, batch: Batch):
    out, records = forward(graphdef, params, batch, Sparsify(), "scores")
    return out["loss_sum"], out["weight"], records["scores"]


@functools.partial(jax.jit, static_argnums=0)
def _sparse_step(graphdef, params, batch: Batch, sparsify: Sparsify):
    out, _ = forward(graphdef, params, batch, sparsify, "mask")
    return out["loss_sum"], out["weight"], out["activation_ratio_sum"]


@functools.partial(jax.jit, static_argnums=0)
def _w_out(graphdef, params) -> Array:
    return nnx.merge(graphdef, params).w_out()


def _check_batches(batches: Sequence[Batch]) -> None:
    if not batches:
        raise UserError("Pass at least one validation batch to the CETT search.")


def dense_pass(graphdef, params, batches: Sequence[Batch]) -> DenseCache:
    """The dense model over `batches`, once: what every later search step needs.

    The activation scores of the REAL tokens of all batches concatenated per layer
    (L, N, F), the stacked output kernels (L, F, d), the input ids of those tokens and
    the dense loss.

    The cache lives on ONE device (the first local one): the searches' set-up is then
    computed once, not replicated on every device of a data-parallel mesh (8× the work
    on 8 CPU devices). Sharding the cache over tokens instead is left for pod-scale runs.
    """
    _check_batches(batches)
    dev = jax.local_devices()[0]
    a, ids, sums = [], [], []
    for batch in batches:
        l_sum, w, s_LxBxTxF = _dense_step(graphdef, params, batch)
        real_M = np.asarray(batch["loss_weights"]).reshape(-1) > 0
        L, B, T, F = s_LxBxTxF.shape
        s_LxMxF = jax.device_put(s_LxBxTxF, dev).reshape(L, B * T, F)
        a.append(s_LxMxF[:, real_M].astype(jnp.float32))
        ids.append(jax.device_put(batch["inputs"], dev).reshape(-1)[real_M])
        sums.append((l_sum, w))
    loss_sum, weight = (float(x) for x in np.sum(jax.device_get(sums), axis=0))  # one host sync
    if weight <= 0:
        raise UserError("The validation batches hold no real tokens; use a larger validation split.")
    w_out = jax.device_put(_w_out(graphdef, params), dev)
    return DenseCache(jnp.concatenate(a, axis=1), w_out, jnp.concatenate(ids),
                      loss_sum / weight, weight)


def sparse_pass(graphdef, params, batches: Sequence[Batch], sparsify: Sparsify) -> SparseEval:
    """Token-weighted loss and per-layer activation ratio with `sparsify` applied
    (thresholds, top-k, FAT-ε); the ratio is measured from the recorded hidden-unit mask."""
    _check_batches(batches)
    totals = None
    for batch in batches:
        out = _sparse_step(graphdef, params, batch, sparsify)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    loss_sum, weight, ratio_sum_L = jax.device_get(totals)
    weight = max(float(weight), 1.0)
    return SparseEval(float(loss_sum) / weight, np.asarray(ratio_sum_L, np.float64) / weight)


def threshold_sparsify(threshold_L) -> Sparsify:
    return Sparsify(mode="threshold", threshold=jnp.asarray(threshold_L, jnp.float32))


def check_cett(cett) -> None:
    c = np.asarray(cett, np.float64)
    if not np.all((c >= 0) & (c <= 1)):
        raise UserError(f"Pass a CETT between 0 and 1; got {cett!r}.")


def prepare_cache(cache: DenseCache) -> PreparedSearch:
    """The threshold search's set-up on a cached dense pass, for many `cache_thresholds` calls."""
    return prepare_search(cache.a_LxNxF, cache.w_out_LxFxD)


def cache_thresholds(cache: DenseCache, cett, prepared: PreparedSearch | None = None) -> CettThresholds:
    """Exact per-layer thresholds for CETT value(s) on a cached dense pass.

    `cett`: a scalar → fields (L,); a list of K values → fields (L, K) (one call, the
    layers' set-up shared by the K targets). `prepared` (`prepare_cache(cache)`): reuse
    that set-up across calls (same results up to float32 rounding).
    """
    check_cett(cett)
    c = jnp.asarray(cett, jnp.float32)
    if prepared is not None:
        res = find_prepared(prepared, c)
    else:
        res = find_threshold(cache.a_LxNxF, cache.w_out_LxFxD, c[None] if c.ndim == 1 else c)
    return CettThresholds(*(np.asarray(x, np.float64) for x in (res.threshold, res.cett, res.sparsity)))


def thresholds_for_cett(model_or_pair: Any, batches: Sequence[Batch], cett: float) -> CettThresholds:
    """Per-layer thresholds of the dense model for a target CETT over all real tokens.

    One `find_threshold` call on the `dense_pass` cache: per-layer thresholds whose CETT
    over all N validation tokens is the largest ≤ c.

    How this differs from the reference code: it computes a threshold per batch and
    averages the thresholds over batches. CETT is not linear in t, so the mean of
    per-batch thresholds is not the threshold of any token set, and its realised CETT on
    the whole validation set is neither ≤ c nor the same for another batch size. Here
    the CETT is a mean over all real tokens at once (padding never counts), the
    threshold is exact for that set, and the realised CETT is reported.

    Args:
      model_or_pair: an `LM`, or (graphdef, params) as in `train.step.forward`.
      batches: validation batches (dicts with inputs, targets, segment_ids, positions,
        loss_weights); tokens with loss weight 0 are padding and never count.
      cett: target CETT in [0, 1] (or a list of K targets → (L, K) fields).
    Returns:
      CettThresholds(threshold, cett, sparsity), each (L,).
    Raises:
      UserError: CETT outside [0, 1], or no batch / no real token.
    """
    check_cett(cett)
    graphdef, params = as_graph_params(model_or_pair)
    return cache_thresholds(dense_pass(graphdef, params, batches), cett)

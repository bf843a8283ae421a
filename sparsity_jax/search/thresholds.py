"""Model-level CETT thresholds: the dense pass that feeds the searches, and sparse passes.

`dense_pass` runs the dense model once over the validation batches and prepares what every
later search step needs (`DenseCache`): the activation scores stay on the run's mesh as
global arrays (tokens over the batch axes `data`/`fsdp`, F over `tensor`), cached in
float32 or bfloat16, or — streaming — recomputed by the model at every pass of the search
(`mode`: `choose_mode` picks by memory). `thresholds_for_cett` / `cache_thresholds` give
exact per-layer thresholds for a target CETT (ReLU² §3) over all real validation tokens;
`sparse_pass` measures the loss and activation ratio with a `Sparsify` applied.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from sparsity_jax.errors import UserError
from sparsity_jax.metrics import (
    ScorePlacement, PreparedSearch, Proxies, Scores, check_target_cett, find_prepared, finish_setup, search_proxies,
    setup_search_block,
)
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.devices.sharding import logical_to_spec
from sparsity_jax.runtime.forward import forward
from sparsity_jax.devices.memory import min_free_bytes
from sparsity_jax.devices.timing import timed

Array = jax.Array
Batch = dict[str, Array]

MODES = ("auto", "cache", "stream")
_CACHE_SHARE = 0.5  # auto mode caches when the caches take at most this share of the free memory


class DenseCache(NamedTuple):
    """One checkpoint's dense validation pass, reused by every search step."""

    prepared: PreparedSearch  # the search's set-up; its scores cached or recomputed (`mode`)
    ids: Array  # (nb, B, T) input token ids
    loss: float  # dense token-weighted cross-entropy (nats)
    tokens: float  # real (loss-weighted) tokens
    mode: str  # "cache" | "stream"


class CettThresholds(NamedTuple):
    """Per-layer result of `thresholds_for_cett`; every array field (L,) float64 (numpy)."""

    threshold: np.ndarray  # skip neuron i where |a_i|·‖W_out,i‖ < threshold
    realised_cett: np.ndarray  # realised CETT over all real validation tokens
    sparsity: np.ndarray  # fraction of real token×neuron pairs below the threshold
    mode: str = "cache"  # how the scores were held: "cache" | "stream"


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


def search_placement(batches: Sequence[Batch], d_ff: int, mesh=None) -> ScorePlacement:
    """Where the scores live: `mesh` (default: the batches' mesh), tokens over the mesh
    axes of the logical 'activation_batch' axis, F over those of 'activation_mlp'
    (`devices.sharding` rules; an axis that does not divide stays replicated). One
    device: `ScorePlacement()`."""
    inputs = batches[0]["inputs"]
    mesh = mesh if mesh is not None else getattr(getattr(inputs, "sharding", None), "mesh", None)
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return ScorePlacement()
    names = lambda e: () if e is None else ((e,) if isinstance(e, str) else tuple(e))  # noqa: E731
    tokens = names(logical_to_spec(("activation_batch",), inputs.shape[:1], mesh)[0])
    neurons = names(logical_to_spec(("activation_mlp",), (d_ff,), mesh)[0])
    return ScorePlacement(mesh, tokens, neurons)


def cache_bytes(batches: Sequence[Batch], n_layers: int, d_ff: int, placement: ScorePlacement,
                dtype=jnp.float32) -> int:
    """Bytes per device of one checkpoint's cached scores (nb, L, B, T, F)."""
    mesh = placement.mesh
    shards = 1 if mesh is None else math.prod(mesh.shape[a] for a in placement.tokens + placement.neurons)
    tokens = sum(math.prod(b["inputs"].shape) for b in batches)
    return tokens * n_layers * d_ff * np.dtype(dtype).itemsize // shards


def choose_mode(mode: str, need_bytes: int, memory_budget: int | None = None) -> str:
    """"cache" or "stream": as asked, or for "auto" cache when `need_bytes` per device
    take at most half of the bytes free on the most loaded device
    (`devices.memory.min_free_bytes`, or `memory_budget`), leaving room for the forward
    pass and the search's per-block temporaries."""
    if mode not in MODES:
        raise UserError(f"Pass the search mode as one of {', '.join(MODES)}; got {mode!r}.")
    if mode != "auto":
        return mode
    return "cache" if need_bytes <= _CACHE_SHARE * min_free_bytes(budget=memory_budget) else "stream"


@dataclasses.dataclass(frozen=True)
class _StreamScores:
    """Streaming `Scores.compute`: block i's scores from the dense model on stacked batch i."""

    graphdef: Any
    dtype: Any

    def __call__(self, args, i: Array) -> Array:
        params, stacked = args
        batch = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), stacked)
        return forward(self.graphdef, params, batch, Sparsify(), "scores")[1]["scores"].astype(self.dtype)


def _constrain(x: Array, placement: ScorePlacement, kind: str) -> Array:
    sharding = placement.sharding(kind, x.ndim - 1)
    if sharding is None:
        return x
    spec = jax.sharding.PartitionSpec(None, *sharding.spec)
    return lax.with_sharding_constraint(x, jax.sharding.NamedSharding(placement.mesh, spec))


@functools.partial(jax.jit, static_argnames=("graphdef", "placement", "dtype"), donate_argnames=("cache", "inv_norm"))
def _dense_step(graphdef, params, batch: Batch, i: Array, cache: Array | None, inv_norm: Array, proxies: Proxies,
                placement: ScorePlacement, dtype):
    """One batch of the dense pass: its loss sums, its scores stored at block i (cache
    mode), its set-up outputs (`metrics.setup_search_block`)."""
    out, records = forward(graphdef, params, batch, Sparsify(), "scores")
    s_LxBxTxF = records["scores"].astype(dtype)
    w_out = nnx.merge(graphdef, params).w_out()
    inv_LxBxT, totals = setup_search_block(placement, s_LxBxTxF, w_out, batch["loss_weights"] > 0, proxies, i)
    inv_norm = _constrain(lax.dynamic_update_index_in_dim(inv_norm, inv_LxBxT, i, 0), placement, "layer_tokens")
    if cache is not None:
        cache = _constrain(lax.dynamic_update_index_in_dim(cache, s_LxBxTxF, i, 0), placement, "scores")
    return cache, inv_norm, totals, (out["loss_sum"], out["weight"]), w_out


@functools.partial(jax.jit, static_argnames=("placement",))
def _stack(batches: Sequence[Batch], placement: ScorePlacement) -> Batch:
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    return jax.tree.map(lambda x: _constrain(x, placement, "tokens"), stacked)


def _zeros(shape: tuple, dtype, placement: ScorePlacement, kind: str) -> Array:
    make = lambda: _constrain(jnp.zeros(shape, dtype), placement, kind)  # noqa: E731
    return jax.jit(make)()


@timed("dense pass")
def dense_pass(graphdef, params, batches: Sequence[Batch], *, mesh=None, mode: str = "auto",
               dtype=jnp.float32, memory_budget: int | None = None, caches: int = 1) -> DenseCache:
    """The dense model over `batches`, once: what every later search step needs.

    One jitted step per batch (compiled once): the loss sums, the set-up of the
    threshold search (per-token dense-output norms, pair counts, proxy tokens' rows) and,
    in cache mode, the batch's scores written into the cache (nb, L, B, T, F) in `dtype`
    (float32 or bfloat16). Real tokens are those with loss weight > 0, used as weights
    (no boolean indexing: no host round trip, no per-batch recompile). Scores stay on
    the mesh (`search_placement`), never on one device or the host.

    Args:
      mesh: the run's mesh (`Workdir.run.mesh`); None: the batches' mesh.
      mode: "cache" (hold the scores), "stream" (hold none: every search pass recomputes
        them with the dense model, one batch at a time) or "auto" (`choose_mode`).
      dtype: storage dtype of the scores (the searches compute in float32).
      memory_budget: bytes per device `auto` may assume free (default: what
        `devices.memory` reads).
      caches: how many such caches will be held at once (the joint PPL-p% search), for
        `auto`.
    Returns:
      DenseCache; `.mode` says which mode ran.
    """
    _check_batches(batches)
    L, F = (int(x) for x in jax.eval_shape(lambda p: nnx.merge(graphdef, p).w_out(), params).shape[:2])
    placement = search_placement(batches, F, mesh)
    dtype = np.dtype(dtype)
    mode = choose_mode(mode, caches * cache_bytes(batches, L, F, placement, dtype), memory_budget)
    stacked = _stack(list(batches), placement)
    real = stacked["loss_weights"] > 0
    proxies = search_proxies(real, F)
    shape = (len(batches), L) + tuple(batches[0]["inputs"].shape)
    cache = _zeros(shape + (F,), dtype, placement, "scores") if mode == "cache" else None
    inv_norm = _zeros(shape, jnp.float32, placement, "layer_tokens")
    totals, sums = [], []
    for i, batch in enumerate(batches):
        cache, inv_norm, block_totals, block_sums, w_out = _dense_step(
            graphdef, params, batch, jnp.int32(i), cache, inv_norm, proxies, placement, dtype)
        totals.append(block_totals)
        sums.append(block_sums)
    loss_sum, weight = (float(x) for x in np.sum(jax.device_get(sums), axis=0))  # one host sync, replicated
    if weight <= 0:
        raise UserError("The validation batches hold no real tokens; use a larger validation split.")
    if mode == "cache":
        scores = Scores(cache, None, placement, len(batches))
    else:
        scores = Scores(None, (params, stacked), placement, len(batches), compute=_StreamScores(graphdef, dtype))
    prepared = finish_setup(scores, w_out, real, inv_norm, jax.tree.map(lambda *x: jnp.stack(x), *totals))
    return DenseCache(prepared, stacked["inputs"], loss_sum / weight, weight, mode)


# The jitted steps take the graphdef as a static argument, so each model structure
# compiles once (Sparsify arrays are traced, so new thresholds never recompile).
@functools.partial(jax.jit, static_argnums=0)
def _sparse_step(graphdef, params, batch: Batch, sparsify: Sparsify):
    out, _ = forward(graphdef, params, batch, sparsify, "mask")
    return out["loss_sum"], out["weight"], out["activation_ratio_sum"]


def _check_batches(batches: Sequence[Batch]) -> None:
    if not batches:
        raise UserError("Pass at least one validation batch to the CETT search.")


@timed("sparse evaluations")
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
    return Sparsify(mode="threshold", threshold=np.asarray(threshold_L, np.float32))


@timed("threshold search")
def cache_thresholds(cache: DenseCache, target_cett, prepared: PreparedSearch | None = None) -> CettThresholds:
    """Exact per-layer thresholds for CETT value(s) on a dense pass.

    `target_cett`: a scalar → fields (L,); a list of K values → fields (L, K) (one search, the
    passes shared by the K targets), in [0, 1] (checked by the caller, `check_target_cett`;
    outside it the fields are NaN). `prepared`: another set-up to search instead of the
    cache's own (default).
    """
    res = find_prepared(cache.prepared if prepared is None else prepared, np.asarray(target_cett, np.float32),
                        check=False)
    fields = (res.threshold, res.realised_cett, res.sparsity)
    return CettThresholds(*(np.asarray(x, np.float64) for x in fields), cache.mode)


def thresholds_for_cett(model_or_pair: Any, batches: Sequence[Batch], target_cett: float, *, mesh=None,
                        mode: str = "auto", dtype=jnp.float32, memory_budget: int | None = None) -> CettThresholds:
    """Per-layer thresholds of the dense model for a target CETT over all real tokens.

    One search on the `dense_pass` (same `mesh`, `mode`, `dtype`, `memory_budget`):
    per-layer thresholds whose CETT over all N validation tokens is the largest ≤ c.

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
      target_cett: target CETT in [0, 1] (or a list of K targets → (L, K) fields).
    Returns:
      CettThresholds(threshold, realised_cett, sparsity, mode), each array (L,).
    Raises:
      UserError: CETT outside [0, 1], bad mode, or no batch / no real token.
    """
    check_target_cett(target_cett)
    graphdef, params = as_graph_params(model_or_pair)
    cache = dense_pass(graphdef, params, batches, mesh=mesh, mode=mode, dtype=dtype, memory_budget=memory_budget)
    return cache_thresholds(cache, target_cett)

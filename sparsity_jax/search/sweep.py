"""PPL-p% over a run's checkpoints (Sparsing Law App. B), baselines' Pareto curves, statistics.

`stabilised_sweep` searches CETT_p once over the last checkpoints and applies it to every
checkpoint (App. B's stabilising strategy), draws the Pareto curves of PPL-p%, top-k and
FAT-ε on the last one (Figure 3, `pareto`) and collects neuron statistics per checkpoint
(`checkpoint_stats`: one pass over the scores on their mesh, like the searches).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from sparsity_jax.metrics.reduce import psum
from sparsity_jax.metrics.stats import dead_ratio, hot_neuron_cdf
from sparsity_jax.metrics.threshold_pass import over_blocks, run_sharded
from sparsity_jax.metrics.threshold_search import PreparedSearch
from sparsity_jax.nn.sparsify import Sparsify, active_at, magnitudes, out_norms
from sparsity_jax.devices.timing import timed
from sparsity_jax.search.ppl import PplSearch, check_p
from sparsity_jax.search.thresholds import (
    Batch, DenseCache, cache_thresholds, dense_pass, sparse_pass, threshold_sparsify,
)

HOT_SHARES = (0.1, 0.2, 0.5)
PARETO_METHODS = ("topk", "fat")  # the baselines' sweeps next to PPL-p% (Sparsing Law Fig. 3)


def _tolist(x):
    return np.asarray(x, np.float64).round(7).tolist()


def default_topk(d_ff: int) -> list[int]:
    """k = F/2, F/4, …, F/32 (at least 1), distinct."""
    return sorted({max(1, d_ff >> j) for j in range(1, 6)}, reverse=True)


def default_fat_eps(cache: DenseCache) -> list[float]:
    """Quantiles 0.25/0.5/0.75/0.9 of the non-zero |a| of the last checkpoint's proxy
    tokens (≈ 2¹⁶/F real tokens per layer, all layers; a sample, not all N·F scores).

    For gated FFNs FAT-ε thresholds the gate score, so these are only a rough scale there.
    """
    a = jnp.abs(cache.prepared.proxy_LxPxF).ravel()
    q = np.asarray(jnp.nanquantile(jnp.where(a > 0, a, jnp.nan), jnp.array([0.25, 0.5, 0.75, 0.9])))
    return [] if np.isnan(q).any() else q.round(6).tolist()  # computed on device; 4 numbers come back


@functools.partial(jax.jit, static_argnames=("vocab_size",))
def _activity(prep: PreparedSearch, ids: jax.Array, threshold_L: jax.Array, vocab_size: int):
    """Over all blocks: per layer and neuron the real tokens where it is active at t_l (L, F),
    per layer and input id the summed active counts (L, V), per id its real tokens (V,),
    and the real tokens — all replicated."""
    placement = prep.scores.placement

    def kernel(axes, a, w_out_LxFxD, real, ids, t_L):
        F = a.shape[-1]
        a_LxMxF, real_M, ids_M = a.reshape(a.shape[0], -1, F), real.reshape(-1), ids.reshape(-1)

        def one_layer(args):
            a_MxF, w_out_FxD, t = args
            active_MxF = real_M[:, None] & active_at(magnitudes(a_MxF, out_norms(w_out_FxD)), t)
            per_token_M = psum(jnp.sum(active_MxF, axis=1, dtype=jnp.int32), axes.neurons).astype(jnp.float32)
            return jnp.sum(active_MxF, axis=0, dtype=jnp.int32), jax.ops.segment_sum(per_token_M, ids_M, vocab_size)

        count_LxF, sum_LxV = lax.map(one_layer, (a_LxMxF, w_out_LxFxD, t_L))
        count_V = jax.ops.segment_sum(real_M.astype(jnp.int32), ids_M, vocab_size)
        gathered = count_LxF if not axes.neurons else lax.all_gather(count_LxF, axes.neurons, axis=1, tiled=True,
                                                                       to="invarying")
        return (psum(gathered, axes.tokens), psum(sum_LxV, axes.tokens), psum(count_V, axes.tokens),
                psum(jnp.sum(real_M, dtype=jnp.int32), axes.tokens))

    def one_block(i):
        return run_sharded(placement, kernel, ("scores", "w_out", "tokens", "tokens", "rep"), P(), prep.scores.block(i),
                           prep.w_out_LxFxD, prep.real[i], ids[i], threshold_L)

    return jax.tree.map(lambda x: jnp.sum(x, axis=0), over_blocks(prep.scores, one_block))


@timed("neuron statistics")
def checkpoint_stats(cache: DenseCache, threshold_L: np.ndarray, vocab_size: int | None = None) -> dict:
    """Neuron statistics from a dense pass with neurons active where ‖n_i‖ ≥ t_l.

    Per-layer activation ratio, dead-neuron ratio (< 0.1% of tokens), per-neuron
    frequency and hot-neuron CDF (`neuron_frequency` / `hot_cdf`: the full arrays;
    `hot_share`: the CDF's share covered by the top 10/20/50% neurons); with
    `vocab_size`, also the activation ratio per vocabulary id (input token). One pass
    over the scores (cached, or recomputed in stream mode), counts psum'd on the mesh.
    """
    count_LxF, sum_LxV, count_V, n_real = _activity(cache.prepared, cache.ids, np.asarray(threshold_L, np.float32),
                                                    vocab_size or 1)
    freq_LxF = count_LxF / jnp.maximum(n_real, 1)
    cdf_LxF = np.asarray(hot_neuron_cdf(freq_LxF))
    F = cdf_LxF.shape[-1]
    out = {
        "activation_ratio": _tolist(jnp.mean(freq_LxF, axis=-1)),
        "dead_ratio": _tolist(dead_ratio(freq_LxF)),
        "hot_share": {str(s): _tolist(cdf_LxF[:, max(1, round(s * F)) - 1]) for s in HOT_SHARES},
        "neuron_frequency": np.asarray(freq_LxF),
        "hot_cdf": cdf_LxF,
    }
    if vocab_size:
        ratio_LxV = jnp.where(count_V > 0, sum_LxV / (jnp.maximum(count_V, 1) * F), 0.0)
        out["per_token_id"] = {"ratio": np.asarray(ratio_LxV), "count": np.asarray(count_V)}
    return out


@timed("Pareto sweeps")
def pareto(graphdef, params, batches: Sequence[Batch], dense_loss: float, ppl_points: list[dict],
           topk: Sequence[int], fat_eps: Sequence[float], log: Callable[[str], None]) -> dict:
    """PPL vs activation ratio (mask-measured, mean over layers) per method (Figure 3).

    Methods: PPL-p% (each p, `ppl_points`), top-k (each k, `Sparsify(mode="topk")`) and
    FAT-ε (each ε); empty `topk` and `fat_eps` draw no curve and run no pass. For all
    three the activation ratio here is measured from the sparse pass's recorded mask
    (a ≠ 0 after dropping), so the methods are compared on one footing.
    """
    def point(sp: Sparsify, **key):
        ev = sparse_pass(graphdef, params, batches, sp)
        log(f"  pareto {key}: PPL {np.exp(ev.loss):.4f}, activation ratio {ev.activation_ratio.mean():.4f}")
        return {**key, "ppl": float(np.exp(ev.loss)), "activation_ratio": float(ev.activation_ratio.mean())}

    # the dense model's recorded-mask ratio, the curves' right end; no sweep (`--pareto none`) → not measured
    dense = sparse_pass(graphdef, params, batches, Sparsify()).activation_ratio.mean() if [*topk, *fat_eps] else None
    return {
        "dense": {"ppl": float(np.exp(dense_loss)), "activation_ratio": None if dense is None else float(dense)},
        "ppl_p": ppl_points,
        "topk": [point(Sparsify(mode="topk", k=int(k)), k=int(k)) for k in topk],
        "fat": [point(Sparsify(mode="fat", eps=float(e)), eps=float(e)) for e in fat_eps],
    }


def stabilised_sweep(
    graphdef,
    steps: Sequence[int],
    load_params: Callable[[int], object],
    batches: Sequence[Batch],
    ps: Sequence[float],
    *,
    tokens_per_step: int,
    warmup_steps: int,
    last: int = 5,
    tol: float = 1e-3,
    topk: Sequence[int] | None = None,
    fat_eps: Sequence[float] | None = None,
    pareto_methods: Sequence[str] = PARETO_METHODS,
    vocab_size: int | None = None,
    log: Callable[[str], None] = lambda msg: None,
    mesh=None,
    mode: str = "auto",
    dtype=jnp.float32,
    memory_budget: int | None = None,
) -> dict:
    """The whole App. B analysis of one run; returns a JSON-ready dict plus array stats.

    Stabilising strategy (App. B): CETT_p is searched once over the LAST `last`
    checkpoints jointly (`ppl.PplSearch`), then applied to every checkpoint: per
    checkpoint one dense pass, the exact thresholds of all p in one search, one sparse
    pass per p (its PPL ratio; the search's own pass at CETT_p for the joint checkpoints). Activation ratio = 1 − sparsity (the dense activations'
    fraction of token×neuron pairs above the threshold, mean over layers) against
    training tokens (step × global batch × sequence length); steps ≤ warm-up are
    flagged (dropped before fitting curves).

    Memory: the joint search holds the `last` checkpoints' dense passes (in stream mode
    only their per-token norms and proxy set-up, no scores); then each joint checkpoint's
    row is computed and its dense pass released, and every other checkpoint is
    processed alone — never more than one dense pass beyond what the joint search held.

    Pareto curves (`pareto`) on the last checkpoint. Statistics (`checkpoint_stats`)
    per checkpoint, on the neurons active at the first p's thresholds
    (|a_i|·‖W_out,i‖ ≥ t_l): per-layer activation ratio, dead-neuron ratio and the hot
    CDF's share covered by the top 10/20/50% neurons for every checkpoint; the full
    per-neuron frequency and hot-CDF arrays and the activation ratio per vocabulary id
    (input token) for the last checkpoint.

    Args:
      steps: checkpoint steps, ascending; load_params(step) -> params.
      ps: p values (percent), each > 0.
      tokens_per_step: global batch size × sequence length.
      warmup_steps: steps ≤ this are flagged `warmup`.
      last: checkpoints searched jointly (the last ones).
      topk, fat_eps: baseline grids (None: `default_topk`, `default_fat_eps`).
      pareto_methods: the baselines swept (of PARETO_METHODS; empty: none, no pass run).
      mesh, mode, dtype, memory_budget: as in `thresholds.dense_pass` ("auto" decides
        for the joint search's `last` caches together, and per checkpoint after it).
    Returns:
      {"search": [...per p...], "checkpoints": [...per step...], "pareto": {...},
       "mode": the joint search's mode,
       "arrays": {"neuron_frequency": (L, F), "hot_cdf": (L, F), "per_token_id": ...}}
      (arrays: of the last checkpoint, for the figures).
    """
    ps = [float(p) for p in ps]
    for p in ps:
        check_p(p)
    steps = sorted(steps)
    joint = steps[-last:]
    dense = dict(mesh=mesh, mode=mode, dtype=dtype, memory_budget=memory_budget)
    log(f"dense passes of the last {len(joint)} checkpoints {joint}")
    params = {s: load_params(s) for s in joint}
    search = PplSearch(graphdef, [params[s] for s in joint], batches, log=log, **dense)
    log(f"scores {'cached on the mesh' if search.mode == 'cache' else 'recomputed at every pass (stream mode)'}")
    results = []
    for p in ps:
        log(f"searching CETT for PPL-{p:g}% over steps {joint}")
        r = search.search(p, tol)
        log(f"PPL-{p:g}%: CETT {r.target_cett:.5f} (PPL ratio {r.ratio:.5f}), "
            f"sparsity {r.overall_sparsity:.4f}, {r.evaluations} sparse evaluations")
        results.append(r)
    target_cetts = [r.target_cett for r in results]
    rows = {}
    for s in joint[::-1] + [s for s in steps if s not in params]:  # the joint ones first, releasing each
        prm = params.pop(s) if s in params else load_params(s)
        cache = search.release(joint.index(s)) if s in joint else dense_pass(graphdef, prm, batches, **dense)
        thr = cache_thresholds(cache, target_cetts)  # fields (L, K)
        row = {"step": int(s), "tokens": int(s) * int(tokens_per_step), "warmup": bool(s <= warmup_steps),
               "dense_loss": cache.loss, "ppl_p": []}
        for j, p in enumerate(ps):
            if s in joint:  # the search evaluated this checkpoint at CETT_p already
                ev = search.points[target_cetts[j]][joint.index(s)]
            else:
                ev = sparse_pass(graphdef, prm, batches, threshold_sparsify(thr.threshold[:, j]))
            row["ppl_p"].append({
                "p": p, "target_cett": target_cetts[j], "threshold": _tolist(thr.threshold[:, j]),
                "realised_cett": _tolist(thr.realised_cett[:, j]), "sparsity": _tolist(thr.sparsity[:, j]),
                "activation_ratio": float(1 - thr.sparsity[:, j].mean()), "ppl_ratio": float(np.exp(ev.loss - cache.loss)),
                "sparse_run_activation_ratio": _tolist(ev.activation_ratio),
            })
        st = checkpoint_stats(cache, thr.threshold[:, 0], vocab_size if s == steps[-1] else None)
        row["stats"] = {k: st[k] for k in ("activation_ratio", "dead_ratio", "hot_share")}
        rows[s] = row
        log(f"step {s}: activation ratio " + ", ".join(f"PPL-{q['p']:g}% {q['activation_ratio']:.4f}"
                                                       for q in row["ppl_p"]))
        if s == steps[-1]:
            stats_last, last_loss, last_params = st, cache.loss, prm
            d_ff = cache.prepared.w_out_LxFxD.shape[1]
            eps = [] if "fat" not in pareto_methods else default_fat_eps(cache) if fat_eps is None else fat_eps
        del cache  # one dense pass at a time from here on
    rows = [rows[s] for s in steps]
    ppl_points = [{"p": q["p"], "target_cett": q["target_cett"], "ppl": float(np.exp(last_loss) * q["ppl_ratio"]),
                   "activation_ratio": float(np.mean(q["sparse_run_activation_ratio"]))} for q in rows[-1]["ppl_p"]]
    log(f"Pareto curves on step {steps[-1]}")
    front = pareto(graphdef, last_params, batches, last_loss, ppl_points,
                   [] if "topk" not in pareto_methods else default_topk(d_ff) if topk is None else topk, eps, log)
    search_json = [{"p": r.p, "target_cett": r.target_cett, "target_cett_upper": r.target_cett_upper,
                    "ppl_ratio": r.ratio, "ppl_ratio_upper": r.ratio_upper,
                    "sparsity": _tolist(r.sparsity.mean(axis=0)),
                    "overall_sparsity": r.overall_sparsity, "activation_ratio": 1 - r.overall_sparsity,
                    "evaluations": r.evaluations, "converged": r.converged, "steps": joint} for r in results]
    arrays = {"neuron_frequency": stats_last["neuron_frequency"], "hot_cdf": stats_last["hot_cdf"]}
    if "per_token_id" in stats_last:
        arrays["per_token_id"] = stats_last["per_token_id"]
    return {"search": search_json, "checkpoints": rows, "pareto": front, "mode": search.mode, "arrays": arrays}

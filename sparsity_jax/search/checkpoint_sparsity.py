"""The sparsity of one trained model for `sparsity-jax compare` (ReLU² Wins Fig. 3a,
Sparsing Law §3.1, App. C, Fig. 3), on its final checkpoint's validation batches:
  * PPL-p% sparsity: CETT_p by `PplSearch`, its per-layer thresholds and the sparsity
    they give (fraction of real token×neuron pairs with ‖n_i‖ < t_l on the dense
    activations, mean over layers);
  * a CETT-vs-sparsity curve: for a grid of target CETTs the exact per-layer thresholds
    (one search for the whole grid) and, from one sparse pass per value, the PPL ratio
    exp(loss_sparse − loss_dense). CETT 0 drops only exact zeros, so its sparsity is the
    activation's natural sparsity.
`report.cett_report` renders the comparison (figure and markdown table)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import jax
import numpy as np

from sparsity_jax.search.ppl import PplSearch
from sparsity_jax.search.thresholds import cache_thresholds, sparse_pass, threshold_sparsify


@dataclasses.dataclass
class ModelSparsity:
    """One model's PPL-p% result (`ppl_p`) and CETT curve (`curve`, one entry per target CETT)."""

    step: int
    d_model: int
    num_layers: int
    d_ff: int
    parameters: int
    validation_tokens: int
    dense_loss: float
    dense_ppl: float
    ppl_p: dict
    curve: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def model_sparsity(run, params, val, step: int, p: float, target_cetts: Sequence[float], tol: float) -> ModelSparsity:
    """PPL-p% search and CETT curve of `params` (a `runtime.model_run.ModelRun`'s) on `val`."""
    search = PplSearch(run.graphdef, [params], val)
    cache = search.caches[0]
    t0 = time.perf_counter()
    r = search.search(p, tol)
    t_search = time.perf_counter() - t0
    thr = cache_thresholds(cache, list(target_cetts), search.prepared[0])  # fields (L, K); set-up reused
    ratios = [math.exp(sparse_pass(run.graphdef, params, val, threshold_sparsify(thr.threshold[:, k])).loss - cache.loss)
              for k in range(len(target_cetts))]
    m = run.model_cfg
    return ModelSparsity(
        step=int(step), d_model=m.d_model, num_layers=m.num_layers, d_ff=m.d_ff,
        parameters=int(sum(np.size(x) for x in jax.tree.leaves(params))), validation_tokens=int(cache.tokens),
        dense_loss=cache.loss, dense_ppl=math.exp(cache.loss),
        ppl_p={"p": p, "target_cett": r.target_cett, "target_cett_upper": r.target_cett_upper, "ppl_ratio": r.ratio,
               "ppl_ratio_upper": r.ratio_upper, "sparsity": r.overall_sparsity,
               "activation_ratio": 1 - r.overall_sparsity, "layer_sparsity": r.sparsity[0].round(6).tolist(),
               "threshold": r.threshold[0].tolist(), "evaluations": r.evaluations, "converged": r.converged,
               "search_seconds": round(t_search, 3)},
        curve={"target_cett": list(map(float, target_cetts)),
               "realised_cett": thr.realised_cett.mean(axis=0).round(6).tolist(),
               "sparsity": thr.sparsity.mean(axis=0).round(6).tolist(),
               "layer_sparsity": thr.sparsity.T.round(6).tolist(), "ppl_ratio": np.round(ratios, 6).tolist()})

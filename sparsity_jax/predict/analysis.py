"""Predictivity of one checkpoint (ReLU² Wins §4 (2), §5.2, App. A.2): low-rank predictors
trained with labels at per-layer thresholds, evaluated on validation tokens (threshold
strategy and top-k; recall, prediction sparsity, PPL with the predicted FFN mode next to
the dense model and the oracle thresholds) and saved next to the checkpoint; and the
deployment aspects (predictivity + affinity columns) `sparsity-jax compare` tabulates.
`report.predictivity` renders the results."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from sparsity_jax.predict import predictor_quality as ev
from sparsity_jax.predict import lowrank as pm
from sparsity_jax.predict import store
from sparsity_jax.predict.checkpoint_affinity import Affinity, affinity_of
from sparsity_jax.predict.data import token_set, training_batches
from sparsity_jax.predict.lowrank import PredictorConfig
from sparsity_jax.predict.train import train_predictors
from sparsity_jax.runtime.trained import real_tokens

Log = Callable[[str], None]
ASPECTS = ("recall", "prediction_sparsity", "predictor_ppl_ratio", "reuse_w1", "reuse_w8", "coactivation_gap")


@dataclasses.dataclass
class Predictivity:
    """The predictors of one checkpoint and their quality; `quality` and `ppl` as
    `predict.predictor_quality.quality` / `perplexities` return them."""

    step: int
    labels: str  # "cett" (active at t_l: ‖n_i‖ ≥ t_l > 0, `nn.sparsify.active_at`) or "zero" (a_i != 0)
    target_cett: float | None
    activation: str
    d_model: int
    d_ff: int
    num_layers: int
    rank: int
    bias: bool
    predictor_parameters: int
    ffn_parameters: int
    parameter_share: float
    thresholds: list[float]
    validation_tokens: int
    training: dict
    quality: list[dict]
    ppl: dict
    saved: str | None = None  # the predictors' directory when saved
    realised_cett: list[float] | None = None
    cett_sparsity: list[float] | None = None
    workdir: str | None = None

    STORED = ("step", "labels", "target_cett", "activation", "d_model", "d_ff", "num_layers", "rank", "bias",
              "parameter_share", "thresholds", "training")  # what predictor.json beside the parameters holds

    def to_json(self) -> dict:
        optional = ("saved", "realised_cett", "cett_sparsity", "workdir")
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in optional and v is None)}


def predictivity(run, params, val, threshold_L, target_cett: float | None, cfg: PredictorConfig, ks: Sequence[int], *,
                 workdir, step: int, save: bool = True, log: Log = lambda msg: None) -> Predictivity:
    """Trains the predictors of `params` (a `runtime.model_run.ModelRun`'s) with labels at the
    per-layer thresholds (those of `target_cett`; None: labels a_i != 0, thresholds 0),
    evaluates them on `val` (threshold strategy, then top-k for each k in `ks`) and, with
    `save`, saves them in WORKDIR/predictors/ (`predict.store`)."""
    m = run.model_cfg
    n_mats = pm.ffn_matrices(m.activation)
    rank = pm.resolve_rank(cfg, m.d_model, m.d_ff, n_mats)
    n_pred, n_ffn = pm.parameter_count(m.d_model, m.d_ff, rank, cfg.bias), n_mats * m.d_model * m.d_ff
    in_sample = " of the evaluated text (no training split)" if run.settings.data.all_validation else ""
    log(f"predictors of rank {rank} ({n_pred / n_ffn:.2%} of the FFN parameters): collecting "
        f"{cfg.train_batches} training batches{in_sample}")
    batches = training_batches(run, str(workdir), cfg.train_batches, val)
    data = token_set(run.graphdef, params, batches, threshold_L)
    log(f"training on {data.x_LxNxD.shape[1]:,} tokens × {m.num_layers} layers, {cfg.steps} steps")
    pred, info = train_predictors(data, cfg, rank, run.mesh, log=log, log_every=max(1, cfg.steps // 4))
    strats = ev.strategies(ks)
    result = Predictivity(
        step=step, labels=cfg.labels, target_cett=target_cett, activation=m.activation, d_model=m.d_model,
        d_ff=m.d_ff, num_layers=m.num_layers, rank=rank, bias=cfg.bias, predictor_parameters=n_pred,
        ffn_parameters=n_ffn, parameter_share=n_pred / n_ffn, thresholds=np.asarray(threshold_L, np.float64).tolist(),
        validation_tokens=real_tokens(val),
        training={"steps": cfg.steps, "batch_tokens": cfg.batch_tokens, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                  "train_batches": cfg.train_batches, "tokens": info.tokens,
                  "pos_weight": info.pos_weight.round(4).tolist(), "final_loss": info.loss.round(6).tolist(),
                  "seconds": round(info.seconds, 3), "compile_seconds": round(info.compile_seconds, 3),
                  "label_active_ratio": data.labels_LxNxF.mean(axis=(1, 2)).round(6).tolist()},
        quality=ev.quality(run.graphdef, params, val, threshold_L, pred, strats),
        ppl=ev.perplexities(run, params, val, threshold_L, pred, strats))
    if save:
        result.saved = str(store.predictor_dir(workdir, step, target_cett))
        store.save(result.saved, pred, {k: getattr(result, k) for k in Predictivity.STORED})
        log(f"saved the predictors in {result.saved}")
    return result


@dataclasses.dataclass
class DeploymentAspects:
    """ReLU² Table 1's predictivity and affinity columns at one set of thresholds, and the
    full results they come from."""

    aspects: dict[str, float]
    predictivity: Predictivity
    affinity: Affinity

    def to_json(self) -> dict:
        return {"aspects": self.aspects, "predictivity": self.predictivity.to_json(),
                "affinity": self.affinity.to_json(cdf=False)}


def deployment_aspects(run, params, val, threshold_L, target_cett: float, *, workdir, step: int,
                       predictor_steps: int, log: Log = lambda msg: None) -> DeploymentAspects:
    """Predictivity and affinity columns at the per-layer thresholds (predictors trained
    `predictor_steps` steps on 4 batches, threshold strategy; reuse at windows 1 and 8)."""
    cfg = PredictorConfig(steps=predictor_steps, train_batches=4)
    pred = predictivity(run, params, val, threshold_L, target_cett, cfg, [], workdir=workdir, step=step, log=log)
    aff = affinity_of(run.graphdef, params, val, threshold_L, (1, 8))
    q, ppl = pred.quality[0], pred.ppl
    columns = {"recall": q["recall"], "prediction_sparsity": q["prediction_sparsity"],
               "predictor_ppl_ratio": ppl["predicted"][0]["ppl_ratio"], "oracle_ppl_ratio": ppl["oracle"]["ppl_ratio"],
               "reuse_w1": float(np.mean(aff.reuse_ratio["1"])), "reuse_w8": float(np.mean(aff.reuse_ratio["8"])),
               "coactivation_gap": float(np.mean(aff.coactivation_gap))}
    return DeploymentAspects(columns, pred, aff)

"""`sparsity-jax predictor`: train and evaluate the low-rank activation predictors of one
checkpoint (ReLU² Wins §4 (2), §5.2, App. A.2). Labels at a CETT (‖n_i‖ > t_l with the
layer's exact threshold on the validation tokens) or a_i != 0; training tokens from the
run's training split; recall / prediction sparsity for the threshold strategy and top-k
on validation tokens (Fig. 5a–c), and the validation PPL with the predictor choosing the
neurons next to the dense model and the oracle threshold mode. Saves the predictors in
WORKDIR/predictors/<step>_cett<c>/ and writes WORKDIR/report/predictor.json + PNGs.

  sparsity-jax predictor --workdir RUN --cett 0.2 [--rank R | --share 0.04] [--steps N]
      [--train-batches N] [--step S] [--eval-batches N] [--labels cett|zero] [--topk 256,128]
"""
from __future__ import annotations

import os

import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list

TAKES_CONFIG = True


def add_parser(sub) -> None:
    from sparsity_jax.predict.model import LABELS, PredictorConfig

    d = PredictorConfig()
    p = sub.add_parser("predictor", help="train and evaluate low-rank activation predictors of a checkpoint")
    common.add_workdir(p)
    p.add_argument("--cett", type=float, default=None, help="CETT of the labels' thresholds, e.g. 0.2")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--rank", type=int, default=None, help="predictor rank r (default: from --share)")
    size.add_argument("--share", type=float, default=d.share, help="predictor parameters / FFN parameters")
    p.add_argument("--steps", type=int, default=d.steps, help="predictor training steps")
    p.add_argument("--train-batches", type=int, default=d.train_batches, help="training batches of tokens")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="tokens per predictor minibatch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--pos-weight", type=float, default=None,
                   help="weight of the active class (default: 2 × #inactive / #active per layer)")
    p.add_argument("--no-bias", action="store_true", help="score = σ(W2·W1·x) without a bias (ReLU² App. A.2)")
    p.add_argument("--labels", choices=LABELS, default="cett",
                   help="active = ‖n_i‖ above the CETT threshold (default) or a_i != 0")
    p.add_argument("--topk", default=None, help="top-k strategies' k values (default F/2, F/4, F/8, F/16)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--output-dir", default=None, help="default: WORKDIR/report")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def predictivity(run, params, val, threshold_L, cett: float | None, cfg, ks, *, workdir: str, step: int,
                 save: bool = True, log=common.log) -> dict:
    """Trains the predictors of `params` with labels at the per-layer thresholds (those of
    CETT `cett`; None: labels a_i != 0, thresholds 0), evaluates them on `val` (threshold
    strategy, then top-k for each k in `ks`) and, with `save`, saves them next to the
    checkpoint. Returns the JSON-able result (without "summary")."""
    from sparsity_jax.predict import evaluate as ev
    from sparsity_jax.predict import model as pm
    from sparsity_jax.predict import store
    from sparsity_jax.predict.data import token_set, training_batches
    from sparsity_jax.predict.train import train_predictors
    from sparsity_jax.runtime.trained import real_tokens

    m = run.model_cfg
    n_mats = pm.ffn_matrices(m.activation)
    rank = pm.resolve_rank(cfg, m.d_model, m.d_ff, n_mats)
    n_pred, n_ffn = pm.parameter_count(m.d_model, m.d_ff, rank, cfg.bias), n_mats * m.d_model * m.d_ff
    log(f"predictors of rank {rank} ({n_pred / n_ffn:.2%} of the FFN parameters): collecting "
        f"{cfg.train_batches} training batches")
    data = token_set(run.graphdef, params, training_batches(run, workdir, cfg.train_batches), threshold_L)
    log(f"training on {data.x_LxNxD.shape[1]:,} tokens × {m.num_layers} layers, {cfg.steps} steps")
    pred, info = train_predictors(data, cfg, rank, run.mesh, log=log, log_every=max(1, cfg.steps // 4))
    strats = ev.strategies(ks)
    quality = ev.quality(run.graphdef, params, val, threshold_L, pred, strats)
    ppl = ev.perplexities(run, params, val, threshold_L, pred, strats)
    result = {
        "step": step, "labels": cfg.labels, "target_cett": cett, "activation": m.activation, "d_model": m.d_model,
        "d_ff": m.d_ff, "num_layers": m.num_layers, "rank": rank, "bias": cfg.bias, "predictor_parameters": n_pred, "ffn_parameters": n_ffn,
        "parameter_share": n_pred / n_ffn, "thresholds": np.asarray(threshold_L, np.float64).tolist(),
        "validation_tokens": real_tokens(val),
        "training": {"steps": cfg.steps, "batch_tokens": cfg.batch_tokens, "lr": cfg.lr,
                     "weight_decay": cfg.weight_decay, "train_batches": cfg.train_batches, "tokens": info.tokens,
                     "pos_weight": info.pos_weight.round(4).tolist(), "final_loss": info.loss.round(6).tolist(),
                     "seconds": round(info.seconds, 3), "compile_seconds": round(info.compile_seconds, 3),
                     "label_active_ratio": data.labels_LxNxF.mean(axis=(1, 2)).round(6).tolist()},
        "quality": quality, "ppl": ppl,
    }
    if save:
        result["saved"] = str(store.predictor_dir(workdir, step, cett))
        store.save(result["saved"], pred, {k: result[k] for k in (
            "step", "labels", "target_cett", "activation", "d_model", "d_ff", "num_layers", "rank", "bias",
            "parameter_share", "thresholds", "training")})
        log(f"saved the predictors in {result['saved']}")
    return result


def summary(r: dict) -> list[str]:
    """The report's text lines."""
    t = r["training"]
    what = "a_i != 0" if r["labels"] == "zero" else f"‖n_i‖ > t_l at CETT {r['target_cett']:g}"
    q = next(x for x in r["quality"] if x["strategy"] == "threshold")
    p = r["ppl"]
    pt = next(x for x in p["predicted"] if x["strategy"] == "threshold")
    lines = [
        f"Step {r['step']} ({r['activation']}): rank-{r['rank']} predictors ({r['parameter_share']:.2%} of the FFN "
        f"parameters) trained {t['steps']} steps on {t['tokens']:,} training tokens, labels {what}.",
        f"Threshold strategy on {r['validation_tokens']:,} validation tokens: recall {q['recall']:.4f}, precision "
        f"{q['precision']:.4f}, prediction sparsity {q['prediction_sparsity']:.4f} (true sparsity "
        f"{q['true_sparsity']:.4f}).",
        f"Validation PPL: dense {p['dense']['perplexity']:.4f}; oracle threshold {p['oracle']['perplexity']:.4f} "
        f"(×{p['oracle']['ppl_ratio']:.4f}); predicted, threshold strategy {pt['perplexity']:.4f} "
        f"(×{pt['ppl_ratio']:.4f}).",
    ]
    topk = {x["k"]: x for x in r["quality"] if x["strategy"] == "topk"}
    for x in p["predicted"]:
        if x["strategy"] == "topk":
            qk = topk[x["k"]]
            lines.append(f"Top-{x['k']}: recall {qk['recall']:.4f} at prediction sparsity "
                         f"{qk['prediction_sparsity']:.4f}, PPL {x['perplexity']:.4f} (×{x['ppl_ratio']:.4f}).")
    return lines


def run(args) -> int:
    from sparsity_jax.nn.activations import ACTIVATIONS
    from sparsity_jax.predict.evaluate import default_ks
    from sparsity_jax.predict import store
    from sparsity_jax.predict.model import PredictorConfig, ffn_matrices, resolve_rank
    from sparsity_jax.search.thresholds import check_cett, thresholds_for_cett

    if args.labels == "cett":
        if args.cett is None:
            raise UserError("Pass --cett C (the CETT of the labels' thresholds, e.g. 0.2) or --labels zero.")
        check_cett(args.cett)
    elif args.cett is not None:
        raise UserError("Drop --cett with --labels zero (its labels are a_i != 0).")
    cfg = PredictorConfig(rank=args.rank, share=args.share, bias=not args.no_bias, labels=args.labels,
                          pos_weight=args.pos_weight, steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr,
                          train_batches=args.train_batches).validate()
    ks = comma_list(args.topk, int, "--topk") if args.topk else None

    def check(settings, steps):
        m = settings.model
        resolve_rank(cfg, m.d_model, m.d_ff, ffn_matrices(m.activation))
        if cfg.labels == "zero" and not ACTIVATIONS[m.activation].exact_zeros:
            raise UserError(f"{m.activation} has no exact zeros, so a_i != 0 labels mark every neuron; use --cett C.")
        if ks is not None and not all(0 < k <= m.d_ff for k in ks):
            raise UserError(f"Pass --topk values between 1 and d_ff = {m.d_ff}; got {ks}.")
        step = steps[-1] if args.step is None else args.step
        store.check_free(store.predictor_dir(args.workdir, step, args.cett if cfg.labels == "cett" else None))

    wd, step, params = common.trained_params(args, check)
    run_ = wd.run
    if cfg.labels == "cett":
        thr = thresholds_for_cett((run_.graphdef, params), wd.val, args.cett)
        threshold_L = thr.threshold
        common.log(f"step {step}: thresholds at CETT {args.cett:g}: " + " ".join(f"{t:.5f}" for t in threshold_L)
                   + f" (sparsity {thr.sparsity.mean():.4f})")
    else:
        threshold_L = np.zeros(run_.model_cfg.num_layers)
    result = predictivity(run_, params, wd.val, threshold_L, args.cett, cfg, ks or default_ks(run_.model_cfg.d_ff),
                          workdir=args.workdir, step=step)
    result = {"workdir": os.path.abspath(args.workdir), **result}
    if cfg.labels == "cett":
        result.update(realised_cett=thr.cett.round(6).tolist(), cett_sparsity=thr.sparsity.round(6).tolist())
    result["summary"] = summary(result)
    for line in result["summary"]:
        common.log(line)
    if common.is_main():
        from sparsity_jax.report.predictivity import write_predictor_report

        paths = write_predictor_report(result, args.output_dir or os.path.join(args.workdir, "report"))
        common.log("wrote " + ", ".join(paths))
    return 0

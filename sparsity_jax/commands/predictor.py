"""`sparsity-jax predictor`: train and evaluate the low-rank activation predictors of one
checkpoint (ReLU² Wins §4 (2), §5.2, App. A.2) with `workflows.at_cett`. Labels at a CETT
(‖n_i‖ ≥ t_l > 0 with the layer's exact threshold on the validation tokens) or a_i != 0; training tokens from the
run's training split; recall / prediction sparsity for the threshold strategy and top-k
on validation tokens (Fig. 5a–c), and the validation PPL with the predictor choosing the
neurons next to the dense model and the oracle threshold mode. Saves the predictors in
WORKDIR/predictors/<step>_cett<c>/ and writes WORKDIR/report/predictor.json + PNGs.

  sparsity-jax predictor --workdir RUN --cett 0.2 [--rank R | --share 0.04] [--steps N]
      [--train-batches N] [--step S] [--eval-batches N] [--labels cett|zero] [--topk 256,128]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.predict import store
from sparsity_jax.predict.predictor_quality import default_ks
from sparsity_jax.predict.lowrank import LABELS, PredictorConfig, ffn_matrices, resolve_rank
from sparsity_jax.search.thresholds import check_target_cett
from sparsity_jax.workflows.at_cett import predictivity_of_checkpoint

TAKES_CONFIG = True


def add_parser(sub) -> None:
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


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.predictivity import predictor_summary, write_predictor_report

    if args.labels == "cett":
        if args.cett is None:
            raise UserError("Pass --cett C (the CETT of the labels' thresholds, e.g. 0.2) or --labels zero.")
        check_target_cett(args.cett)
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
    target = args.cett if cfg.labels == "cett" else None
    result = predictivity_of_checkpoint(wd.run, params, wd.val, target, cfg, ks or default_ks(wd.run.model_cfg.d_ff),
                                        workdir=wd.workdir, step=step, log=common.log).to_json()
    for line in predictor_summary(result):
        common.log(line)
    if common.is_main():
        paths = write_predictor_report(result, args.output_dir or wd.workdir.report)
        common.log("wrote " + ", ".join(paths))
    return 0

"""`sparsity-jax compare`: train a family of tiny LMs (a config file's variants) and compare
their sparsity. By default the activations of ReLU² Wins §5 (Fig. 3a) at laptop scale
(configs/relu2/tiny.py: ReLU, ReLU², SiLU and parameter-matched SwiGLU on `local_code`);
`--config configs/sparsing_law/width_depth.py` compares width-depth ratios (Sparsing Law
§5). On each final checkpoint's validation batches: PPL-p% sparsity and a CETT-vs-sparsity
curve (`search.checkpoint_sparsity`), and predictivity and hardware affinity at the PPL-p%
thresholds (ReLU² Table 1's other two aspects, `predict.analysis.deployment_aspects`:
low-rank predictors trained briefly, `--predictor-steps`; reuse ratio at windows 1 and 8
and the top-average co-activation gap). Writes WORKDIR/compare.json, compare.png, compare.md and,
when d/L differs, width_depth.png (`report.cett_report.write_compare_report`).

    sparsity-jax compare --workdir runs/compare [--variants relu,relu2] [--p 1]
        [--cetts 0,0.02,...] [--config FILE] [--config.train.steps=100 ...]

Resumable: a model whose workdir (WORKDIR/<variant>) already holds a checkpoint at
`train.steps` is not trained again; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

from sparsity_jax import settings
from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime.workdir import as_path
from sparsity_jax.search.ppl import check_p
from sparsity_jax.search.thresholds import check_target_cett
from sparsity_jax.workflows.comparison import compare

TAKES_CONFIG = True
CONFIG = "configs/relu2/tiny.py"
CETTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train a family of tiny models (ReLU/ReLU²/SiLU/SwiGLU by default), compare "
                                       "PPL-1%% sparsity and CETT curves")
    p.add_argument("--workdir", default="runs/compare", help="one sub-directory per variant")
    common.add_config(p, default=CONFIG, what="config file taking the variant as its :VARIANT (default "
                                              f"{CONFIG}); --config.a.b=V applies to every model")
    p.add_argument("--variants", "--activations", dest="variants", default=None,
                   help="comma-separated variants (default: the config file's VARIANTS)")
    p.add_argument("--p", type=float, default=1.0, help="PPL-p%% (percent)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--cetts", default=",".join(f"{c:g}" for c in CETTS), help="CETT grid of the curves")
    p.add_argument("--predictor-steps", type=int, default=300,
                   help="predictor training steps per variant (0: no predictivity / affinity columns)")
    common.add_eval_batches(p, text=False)  # it trains: its data needs a training split
    common.add_distributed(p)


def run(args) -> int:
    """Trains what is missing, analyses every model, writes compare.{json,png,md}."""
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.cett_report import compare_table, write_compare_report

    check_p(args.p)
    if args.predictor_steps < 0:
        raise UserError(f"Pass --predictor-steps ≥ 0 (0: no predictivity / affinity); got {args.predictor_steps}.")
    target_cetts = sorted(set(comma_list(args.cetts, float, "--cetts")))
    check_target_cett(target_cetts)
    config = args.config.partition(":")[0]
    names = comma_list(args.variants, str, "--variants") if args.variants else list(settings.variants(config))
    if not names:
        raise UserError(f"{config} names no VARIANTS; pass --variants A,B (its :ARG values).")
    overrides = common.overrides(args)
    models = {v: settings.load(f"{config}:{v}", overrides) for v in names}  # every name checked before training
    common.init_distributed(args)
    root = as_path(args.workdir)
    results = compare(models, root, args.p, target_cetts, args.tol, args.predictor_steps, log=common.log)
    out = {"config": config, "overrides": overrides, "p": args.p, "tol": args.tol, "models": results}
    if common.is_main():
        paths = write_compare_report(out, root)
        common.log(compare_table(results, args.p))
        common.log("wrote " + ", ".join(paths))
    return 0

"""`sparsity-jax affinity`: hardware affinity of one checkpoint's activation pattern (ReLU²
Wins §4 (3), §5.3, App. D): with neurons active where ‖n_i‖ ≥ t_l > 0 (the layer's CETT
threshold) on the validation batches, the reuse ratio of a sliding window of w previous
tokens of the same sequence against each layer's activation ratio (Fig. 6), the
top-average co-activation gap per layer (Fig. 7) and the hot-neuron CDF (computed by
`workflows.at_cett` with `predict.checkpoint_affinity`). Writes WORKDIR/report/affinity.json + PNGs.

  sparsity-jax affinity --workdir RUN --cett 0.2 [--windows 1,2,4,8] [--step S]
      [--eval-batches N] [--neurons N]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.predict.checkpoint_affinity import MAX_NEURONS
from sparsity_jax.search.thresholds import check_target_cett
from sparsity_jax.workflows.at_cett import affinity_at_cett

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("affinity", help="reuse ratio, co-activation gap and hot neurons at a CETT (ReLU² §5.3)")
    common.add_workdir(p)
    p.add_argument("--cett", type=float, required=True, help="CETT of the active neurons' thresholds, e.g. 0.2")
    p.add_argument("--windows", default="1,2,4,8", help="reuse-ratio windows (previous tokens), e.g. 1,2,4,8")
    p.add_argument("--neurons", type=int, default=None,
                   help=f"co-activation on a fixed random subsample of N neurons (default: all, at most {MAX_NEURONS})")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--output-dir", default=None, help="default: WORKDIR/report")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def check_windows(text: str) -> list[int]:
    windows = comma_list(text, int, "--windows")
    if not all(w >= 1 for w in windows):
        raise UserError(f"Pass --windows as positive numbers of previous tokens, e.g. 1,2,4,8; got {text!r}.")
    return sorted(set(windows))


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.predictivity import affinity_summary, write_affinity_report

    check_target_cett(args.cett)
    windows = check_windows(args.windows)

    def check(settings, steps):
        if args.neurons is not None and not 2 <= args.neurons <= settings.model.d_ff:
            raise UserError(f"Pass --neurons between 2 and d_ff = {settings.model.d_ff}; got {args.neurons}.")

    wd, step, params = common.trained_params(args, check)
    result = affinity_at_cett(wd.run.graphdef, params, wd.val, args.cett, windows, args.neurons, step=step,
                              workdir=str(wd.workdir)).to_json()
    for line in affinity_summary(result):
        common.log(line)
    if common.is_main():
        paths = write_affinity_report(result, args.output_dir or wd.workdir.report)
        common.log("wrote " + ", ".join(paths))
    return 0

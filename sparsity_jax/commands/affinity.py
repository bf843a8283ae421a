"""`sparsity-jax affinity`: hardware affinity of one checkpoint's activation pattern (ReLU²
Wins §4 (3), §5.3, App. D): with neurons active where ‖n_i‖ > t_l (the layer's CETT
threshold) on the validation batches, the reuse ratio of a sliding window of w previous
tokens of the same sequence against each layer's activation ratio (Fig. 6), the
top-average co-activation gap per layer (Fig. 7) and the hot-neuron CDF. Writes
WORKDIR/report/affinity.json + PNGs.

  sparsity-jax affinity --workdir RUN --cett 0.2 [--windows 1,2,4,8] [--step S]
      [--eval-batches N] [--neurons N]
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list

TAKES_CONFIG = True
MAX_NEURONS = 4096  # co-activation on more neurons than this uses a fixed random subsample by default


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


def affinity_of(graphdef, params, batches, threshold_L, windows: Sequence[int], neurons: int | None = None) -> dict:
    """Reuse ratios, activation ratios, co-activation gaps and the hot-neuron CDF of the
    neurons active at `threshold_L` on the real tokens of `batches` (JSON-able, per layer).

    The masks of all batches are concatenated along the batch axis (L·N·F bytes on the
    devices for N token positions), keeping each row's sequences and segment ids, so the
    reuse windows never cross a sequence or padding."""
    import jax.numpy as jnp

    from sparsity_jax.metrics import coactivation, coactivation_gap, hot_neuron_cdf, neuron_frequency, reuse_ratio
    from sparsity_jax.predict.data import record_active
    from sparsity_jax.runtime.trained import real_tokens

    t_L = jnp.asarray(threshold_L, jnp.float32)
    masks = [record_active(graphdef, params, b, t_L, False)[1] for b in batches]
    mask_LxBxTxF = jnp.concatenate(masks, axis=1)
    real_BxT = jnp.concatenate([b["loss_weights"] > 0 for b in batches], axis=0)
    seg_BxT = jnp.concatenate([b["segment_ids"] for b in batches], axis=0)
    d_ff = mask_LxBxTxF.shape[-1]
    n = neurons if neurons is not None else (None if d_ff <= MAX_NEURONS else MAX_NEURONS)
    reuse = reuse_ratio(mask_LxBxTxF, tuple(windows), real_BxT, segment_ids=seg_BxT)
    co = coactivation(mask_LxBxTxF, real_BxT, neurons=n)
    cdf_LxF = np.asarray(hot_neuron_cdf(neuron_frequency(mask_LxBxTxF, real_BxT)))
    top = {f"top_{q}pct": cdf_LxF[:, max(1, int(round(d_ff * q / 100))) - 1].round(6).tolist() for q in (10, 20, 50)}
    return {
        "windows": list(windows), "validation_tokens": real_tokens(batches),
        "activation_ratio": np.asarray(reuse.activation_ratio).round(6).tolist(),
        "reuse_ratio": {str(w): np.asarray(reuse.reuse[j]).round(6).tolist() for j, w in enumerate(windows)},
        "coactivation_gap": np.asarray(coactivation_gap(co.matrix)).round(6).tolist(),
        "coactivation_neurons": int(co.neurons.shape[0]), "coactivation_subsampled": n is not None and n < d_ff,
        "hot_neuron_share": top, "hot_neuron_cdf": cdf_LxF.round(5).tolist(),
    }


def summary(r: dict) -> list[str]:
    ratio = np.asarray(r["activation_ratio"])
    reuse = " ".join(f"w={w}: {np.mean(v):.4f}" for w, v in r["reuse_ratio"].items())
    sub = f" (a fixed random subsample of {r['coactivation_neurons']} neurons)" if r["coactivation_subsampled"] else ""
    return [
        f"Step {r['step']}, neurons active where ‖n_i‖ > t_l at CETT {r['target_cett']:g}, "
        f"{r['validation_tokens']:,} validation tokens: activation ratio {ratio.mean():.4f} (layers {ratio.min():.4f}–{ratio.max():.4f}).",
        f"Reuse ratio, mean over layers: {reuse}.",
        f"Top-average co-activation gap, mean over layers: {np.mean(r['coactivation_gap']):.4f}{sub}.",
        f"The 10% most frequent neurons carry {np.mean(r['hot_neuron_share']['top_10pct']):.1%} of the activations "
        f"(20%: {np.mean(r['hot_neuron_share']['top_20pct']):.1%}), mean over layers.",
    ]


def run(args) -> int:
    from sparsity_jax.search.thresholds import check_cett, thresholds_for_cett

    check_cett(args.cett)
    windows = check_windows(args.windows)

    def check(settings, steps):
        if args.neurons is not None and not 2 <= args.neurons <= settings.model.d_ff:
            raise UserError(f"Pass --neurons between 2 and d_ff = {settings.model.d_ff}; got {args.neurons}.")

    wd, step, params = common.trained_params(args, check)
    thr = thresholds_for_cett((wd.run.graphdef, params), wd.val, args.cett)
    result = {"workdir": os.path.abspath(args.workdir), "step": step, "target_cett": args.cett,
              "thresholds": thr.threshold.tolist(), "realised_cett": thr.cett.round(6).tolist(),
              **affinity_of(wd.run.graphdef, params, wd.val, thr.threshold, windows, args.neurons)}
    result["summary"] = summary(result)
    for line in result["summary"]:
        common.log(line)
    if common.is_main():
        from sparsity_jax.report.predictivity import write_affinity_report

        paths = write_affinity_report(result, args.output_dir or os.path.join(args.workdir, "report"))
        common.log("wrote " + ", ".join(paths))
    return 0

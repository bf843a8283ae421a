"""JSON + PNG of `sparsity-jax predictor` and `sparsity-jax affinity` (ReLU² Wins §5.2–5.3).

Files under the report directory (WORKDIR/report/ by default), read by the run report:
  predictor.json        predictors, quality per strategy and layer, PPL, "summary" lines
  predictor_layers.png  recall, prediction and true sparsity per layer (threshold strategy)
  predictor_topk.png    recall vs prediction sparsity, top-k at several k (Fig. 5a) and
                        the threshold strategy
  predictor_ppl.png     validation PPL vs prediction sparsity, dense and oracle lines
  affinity.json         reuse ratios, activation ratios, co-activation gaps, hot neurons
  reuse_ratio.png       reuse ratio vs activation ratio per layer, one series per window (Fig. 6)
  coactivation_gap.png  top-average co-activation gap per layer (Fig. 7)
  hot_neurons.png       hot-neuron CDF per layer (App. D)
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsity_jax.report.layers import integer_axis, layer_curves, legend_below  # noqa: E402
from sparsity_jax.runtime.workdir import PathLike, as_path, save_figure, write_json  # noqa: E402

PREDICTOR_FILES = ("predictor.json", "predictor_layers.png", "predictor_topk.png", "predictor_ppl.png")
AFFINITY_FILES = ("affinity.json", "reuse_ratio.png", "coactivation_gap.png", "hot_neurons.png")


def _write(result: dict, out_dir: PathLike, files: tuple[str, ...], plots) -> list[str]:
    paths = [as_path(out_dir) / f for f in files]
    write_json(paths[0], result)
    for plot, path in zip(plots, paths[1:]):
        plot(result, path)
    return [str(p) for p in paths]


def _threshold_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["strategy"] == "threshold")


def _layers(result: dict, path) -> None:
    q = _threshold_row(result["quality"])["layers"]
    layers = np.arange(len(q["recall"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(layers, q["recall"], "o-", label="recall")
    ax.plot(layers, q["prediction_sparsity"], "s-", label="prediction sparsity")
    ax.plot(layers, q["true_sparsity"], "k--", label="true sparsity (labels)")
    ax.set(xlabel="layer", ylabel="ratio", ylim=(0, 1.02),
           title=f"threshold strategy (score > 0.5), rank {result['rank']}")
    integer_axis(ax.xaxis)
    legend_below(ax)
    save_figure(fig, path, tight=True)


def _topk(result: dict, path) -> None:
    rows = result["quality"]
    topk = sorted((r for r in rows if r["strategy"] == "topk"), key=lambda r: r["prediction_sparsity"])
    thr = _threshold_row(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    if topk:
        ax.plot([r["prediction_sparsity"] for r in topk], [r["recall"] for r in topk], "o-", label="top-k")
        for r in topk:
            ax.annotate(f"k={r['k']}", (r["prediction_sparsity"], r["recall"]), fontsize=7)
    ax.plot([thr["prediction_sparsity"]], [thr["recall"]], "*", ms=12, label="threshold (score > 0.5)")
    ax.axvline(thr["true_sparsity"], color="k", ls=":", label="true sparsity")
    ax.set(xlabel="prediction sparsity", ylabel="recall", title="recall vs prediction sparsity")
    ax.legend()
    save_figure(fig, path, tight=True)


def _ppl(result: dict, path) -> None:
    quality = {(r["strategy"], r["k"]): r for r in result["quality"]}
    ppl = result["ppl"]
    points = [(quality[(r["strategy"], r["k"])]["prediction_sparsity"], r["perplexity"], r) for r in ppl["predicted"]]
    topk = sorted((p for p in points if p[2]["strategy"] == "topk"), key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    if topk:
        ax.plot([p[0] for p in topk], [p[1] for p in topk], "o-", label="predicted, top-k")
        for s, v, r in topk:
            ax.annotate(f"k={r['k']}", (s, v), fontsize=7)
    for s, v, r in points:
        if r["strategy"] == "threshold":
            ax.plot([s], [v], "*", ms=12, label="predicted, threshold")
    ax.axhline(ppl["dense"]["perplexity"], color="k", ls=":", label="dense")
    ax.axhline(ppl["oracle"]["perplexity"], color="tab:red", ls="--",
               label=f"oracle threshold (sparsity {_threshold_row(result['quality'])['true_sparsity']:.3f})")
    ax.set(xlabel="prediction sparsity", ylabel="validation PPL (log)", title="PPL with predicted neurons", yscale="log")
    ax.legend(fontsize=8)
    save_figure(fig, path, tight=True)


def predictor_summary(r: dict) -> list[str]:
    """The report's text lines of a `predict.analysis.Predictivity` (as JSON)."""
    t = r["training"]
    what = "a_i != 0" if r["labels"] == "zero" else f"‖n_i‖ ≥ t_l > 0 at CETT {r['target_cett']:g}"
    q = _threshold_row(r["quality"])
    p = r["ppl"]
    pt = _threshold_row(p["predicted"])
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


def write_predictor_report(result: dict, out_dir: PathLike) -> list[str]:
    """predictor.json (with "summary") and its three PNGs; returns the written paths."""
    result = {**result, "summary": predictor_summary(result)}
    return _write(result, out_dir, PREDICTOR_FILES, (_layers, _topk, _ppl))


def _reuse(result: dict, path) -> None:
    ratio = result["activation_ratio"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for w, reuse in result["reuse_ratio"].items():
        order = np.argsort(ratio)
        ax.plot(np.asarray(ratio)[order], np.asarray(reuse)[order], "o-", ms=4, label=f"window {w}")
    ax.set(xlabel="activation ratio (layer)", ylabel="reuse ratio", title="reuse ratio vs activation ratio per layer")
    ax.legend()
    save_figure(fig, path, tight=True)


def _gap(result: dict, path) -> None:
    gap = result["coactivation_gap"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(gap)), gap, "o-")
    sub = "" if not result["coactivation_subsampled"] else f", {result['coactivation_neurons']} sampled neurons"
    ax.set(xlabel="layer", ylabel="top-average co-activation gap", title=f"co-activation gap{sub}")
    integer_axis(ax.xaxis)
    save_figure(fig, path, tight=True)


def _hot(result: dict, path) -> None:
    cdf = np.asarray(result["hot_neuron_cdf"])
    fig, ax = plt.subplots(figsize=(6, 4))
    if layer_curves(fig, ax, np.arange(1, cdf.shape[1] + 1) / cdf.shape[1], cdf, value="share of activations",
                    xlabel="fraction of neurons (most frequent first)", title="hot-neuron CDF"):
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    save_figure(fig, path, tight=True)


def affinity_summary(r: dict) -> list[str]:
    """The report's text lines of a `predict.checkpoint_affinity.Affinity` (as JSON)."""
    ratio = np.asarray(r["activation_ratio"])
    reuse = " ".join(f"w={w}: {np.mean(v):.4f}" for w, v in r["reuse_ratio"].items())
    sub = f" (a fixed random subsample of {r['coactivation_neurons']} neurons)" if r["coactivation_subsampled"] else ""
    return [
        f"Step {r['step']}, neurons active where ‖n_i‖ ≥ t_l > 0 at CETT {r['target_cett']:g}, "
        f"{r['validation_tokens']:,} validation tokens: activation ratio {ratio.mean():.4f} "
        f"(layers {ratio.min():.4f}–{ratio.max():.4f}).",
        f"Reuse ratio, mean over layers: {reuse}.",
        f"Top-average co-activation gap, mean over layers: {np.mean(r['coactivation_gap']):.4f}{sub}.",
        f"The 10% most frequent neurons carry {np.mean(r['hot_neuron_share']['top_10pct']):.1%} of the activations "
        f"(20%: {np.mean(r['hot_neuron_share']['top_20pct']):.1%}), mean over layers.",
    ]


def write_affinity_report(result: dict, out_dir: PathLike) -> list[str]:
    """affinity.json (with "summary") and its three PNGs; returns the written paths."""
    result = {**result, "summary": affinity_summary(result)}
    return _write(result, out_dir, AFFINITY_FILES, (_reuse, _gap, _hot))

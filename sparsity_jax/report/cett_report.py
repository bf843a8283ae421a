"""JSON + PNG report of a PPL-p% sweep (`workflows.ppl_sweep.PplSweep`), and the files of
`sparsity-jax compare` (`search.checkpoint_sparsity` + `predict.analysis` results per model).

Files under the output directory (WORKDIR/report/ by default):
  ppl.json                   search results, per-checkpoint rows, Pareto points, and
                             the last checkpoint's per-layer neuron statistics
  activation_over_training.png  activation ratio (1 − sparsity) vs training tokens per p,
                             warm-up points hollow (Sparsing Law Fig. 4 style)
  layer_ratios.png           per-layer activation ratio at each p (last checkpoint)
  pareto.png                 PPL vs activation ratio: PPL-p%, top-k, FAT-ε (Fig. 3)
  neuron_frequency.png       per-layer histograms of neuron activation frequency and the
                             hot-neuron CDF (last checkpoint)
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from sparsity_jax.predict.analysis import ASPECTS  # noqa: E402
from sparsity_jax.report.layers import integer_axis, layer_curves, legend_below  # noqa: E402
from sparsity_jax.runtime.workdir import PathLike, as_path, save_figure, write_json, write_text  # noqa: E402

FILES = ("ppl.json", "activation_over_training.png", "layer_ratios.png", "pareto.png", "neuron_frequency.png")


def _over_training(result: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["checkpoints"]
    for j, s in enumerate(result["search"]):
        x = np.array([r["tokens"] for r in rows], float)
        y = np.array([r["ppl_p"][j]["activation_ratio"] for r in rows])
        warm = np.array([r["warmup"] for r in rows])
        line, = ax.plot(x, y, "-", label=f"PPL-{s['p']:g}% (CETT {s['target_cett']:.3f})")
        ax.plot(x[~warm], y[~warm], "o", color=line.get_color())
        ax.plot(x[warm], y[warm], "o", mfc="none", color=line.get_color())
    ax.set(xlabel="training tokens", ylabel="activation ratio", title="activation ratio over training (hollow: warm-up)")
    ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 1.2G: labels that fit
    if len(rows) == 1:  # one checkpoint (an imported model): no training axis to speak of
        ax.set_xticks([rows[0]["tokens"]])
        ax.set_title(f"activation ratio of the one checkpoint (step {rows[0]['step']})")
    ax.legend()
    save_figure(fig, path, tight=True)


def _layer_ratios(result: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    last = result["checkpoints"][-1]
    for q in last["ppl_p"]:
        r = 1 - np.asarray(q["sparsity"])
        ax.plot(np.arange(len(r)), r, "o-", label=f"PPL-{q['p']:g}%")
    ax.plot(np.arange(len(last["stats"]["dead_ratio"])), last["stats"]["dead_ratio"], "k--", label="dead ratio")
    ax.set(xlabel="layer", ylabel="ratio", title=f"per-layer activation ratio, step {last['step']}")
    integer_axis(ax.xaxis)
    legend_below(ax)
    save_figure(fig, path, tight=True)


def _pareto(result: dict, path) -> None:
    front = result["pareto"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, key, pts in (("PPL-p%", "p", front["ppl_p"]), ("top-k", "k", front["topk"]), ("FAT-ε", "eps", front["fat"])):
        if not pts:
            continue
        pts = sorted(pts, key=lambda q: q["activation_ratio"])
        ax.plot([q["activation_ratio"] for q in pts], [q["ppl"] for q in pts], "o-", label=name)
        for q in pts:
            ax.annotate(f"{q[key]:.3g}", (q["activation_ratio"], q["ppl"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(front["dense"]["ppl"], color="k", ls=":", label="dense")
    # log PPL: a pretrained model's top-k points reach 10⁴× the dense PPL
    ax.set(xlabel="activation ratio (recorded mask)", ylabel="validation PPL (log)", title="PPL vs activation ratio",
           yscale="log")
    ax.legend()
    save_figure(fig, path, tight=True)


def _frequency(arrays: dict, path) -> None:
    freq, cdf = np.asarray(arrays["neuron_frequency"]), np.asarray(arrays["hot_cdf"])
    edges = np.linspace(0, 1, 41)
    counts = np.stack([np.histogram(f, bins=edges)[0] for f in freq])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    layer_curves(fig, ax1, (edges[:-1] + edges[1:]) / 2, counts, xlabel="activation frequency", value="neurons",
                 title="neuron activation frequency", drawstyle="steps-mid")
    layer_curves(fig, ax2, np.arange(1, cdf.shape[1] + 1) / cdf.shape[1], cdf, value="share of activations",
                 xlabel="fraction of neurons (most frequent first)", title="hot-neuron CDF")
    save_figure(fig, path, tight=True)


def write_ppl_report(result, out_dir: PathLike) -> list[str]:
    """Writes ppl.json (`result.to_json()`) and the PNGs of a `workflows.ppl_sweep.PplSweep`;
    returns the written paths."""
    paths = [as_path(out_dir) / f for f in FILES]
    data = result.to_json()
    write_json(paths[0], data)
    _over_training(data, paths[1])
    _layer_ratios(data, paths[2])
    _pareto(data, paths[3])
    _frequency(result.arrays, paths[4])
    return [str(p) for p in paths]


def _width_depth(result: dict, path) -> None:
    """Activation ratio at PPL-p% and dense validation loss against d/L (Sparsing Law Fig. 6–7)."""
    rows = sorted((r["d_model"] / r["num_layers"], name, r) for name, r in result["models"].items())
    x = [q[0] for q in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(x, [q[2]["ppl_p"]["activation_ratio"] for q in rows], "o-")
    ax2.plot(x, [q[2]["dense_loss"] for q in rows], "o-")
    for ax, ylabel in ((ax1, f"activation ratio at PPL-{result['p']:g}%"), (ax2, "dense validation loss")):
        for xi, name, r in rows:
            ax.annotate(name, (xi, r["ppl_p"]["activation_ratio"] if ax is ax1 else r["dense_loss"]), fontsize=7)
        ax.set(xscale="log", xlabel="width-depth ratio d/L", ylabel=ylabel)
    save_figure(fig, path, tight=True)


def _cell(aspects: dict | None, key: str) -> str:
    return "-" if aspects is None else f"{aspects[key]:.4f}"


def compare_table(models: dict, p: float) -> str:
    """Markdown table of the PPL-p% results of `sparsity-jax compare`, one row per model."""
    head = (f"| variant | d/L | F | params | dense PPL | CETT at PPL-{p:g}% | PPL ratio | sparsity | "
            "activation ratio | natural sparsity (CETT 0) | sparse evals | recall | prediction sparsity | "
            "predictor PPL ratio | reuse w=1 | reuse w=8 | co-activation gap |\n" + "|---" * 17 + "|")
    rows = []
    for name, r in models.items():
        q, c = r["ppl_p"], r["curve"]
        natural = c["sparsity"][c["target_cett"].index(0.0)] if 0.0 in c["target_cett"] else float("nan")
        rows.append(f"| {name} | {r['d_model'] / r['num_layers']:.3g} | {r['d_ff']} | {r['parameters']:,} | "
                    f"{r['dense_ppl']:.3f} | {q['target_cett']:.4f} | "
                    f"{q['ppl_ratio']:.4f} | {q['sparsity']:.4f} | {q['activation_ratio']:.4f} | {natural:.4f} | "
                    f"{q['evaluations']} | " + " | ".join(_cell(r.get("aspects"), k) for k in ASPECTS) + " |")
    return "\n".join([head] + rows)


def write_compare_report(result: dict, out_dir: PathLike) -> list[str]:
    """compare.json (with the markdown "table"), compare.png and compare.md of `sparsity-jax
    compare` (ReLU² Fig. 3a style), and width_depth.png when the models' d/L differ
    (Sparsing Law Fig. 6–7).

    The figure: left, sparsity (mean over layers, dense activations) vs CETT per
    variant with the PPL-p% point marked; right, PPL ratio vs sparsity along the same
    CETT grid, with the 1 + p% line.
    """
    result = {**result, "table": compare_table(result["models"], result["p"])}
    paths = [as_path(out_dir) / f"compare.{ext}" for ext in ("json", "png", "md")]
    write_json(paths[0], result)
    p = result["p"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in result["models"].items():
        c, q = r["curve"], r["ppl_p"]
        line, = ax1.plot(c["target_cett"], c["sparsity"], "o-", ms=3, label=f"{name} (F={r['d_ff']})")
        ax1.plot([q["target_cett"]], [q["sparsity"]], "*", ms=12, color=line.get_color())
        ax2.plot(c["sparsity"], c["ppl_ratio"], "o-", ms=3, color=line.get_color(), label=name)
        ax2.plot([q["sparsity"]], [q["ppl_ratio"]], "*", ms=12, color=line.get_color())
    ax1.set(xlabel="CETT", ylabel="sparsity (mean over layers)", title=f"sparsity vs CETT (★ PPL-{p:g}%)")
    ax2.axhline(1 + p / 100, color="k", ls=":", label=f"1 + {p:g}%")
    ax2.set(xlabel="sparsity (mean over layers)", ylabel="PPL ratio (sparse / dense)", title="PPL ratio vs sparsity",
            ylim=(0.995, max(1.08, 1 + 3 * p / 100)))
    ax1.legend()
    ax2.legend()
    save_figure(fig, paths[1], tight=True)
    write_text(paths[2], f"# PPL-{p:g}% sparsity of the tiny models ({result['config']})\n\n{result['table']}\n")
    if len({r["d_model"] / r["num_layers"] for r in result["models"].values()}) > 1:
        paths.append(as_path(out_dir) / "width_depth.png")
        _width_depth(result, paths[-1])
    return [str(p) for p in paths]

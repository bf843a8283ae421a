"""One report per run: every measurement a workdir holds, as RUN/report/index.html and
report.md. Reads what training and the evaluation commands left in the workdir
(metrics.jsonl, eval.json, cett.json, report/*.json); a section without data names the
command that produces it."""
from __future__ import annotations

import json
import os

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.report.render import Section, markdown, page
from sparsity_jax.runtime import names
from sparsity_jax.runtime.logs import by_step, read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    _plt().close(fig)
    return name


def _json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def training(wd: str, logs: dict, out_dir: str) -> Section:
    """Training loss and validation loss / perplexity over steps."""
    s = Section("Training and validation loss")
    train, evals = by_step(logs.get(names.TRAIN, {})), by_step(logs.get(names.EVAL, {}))
    if not train and not evals:
        s.missing = f"train a model: sparsity-jax train --workdir {wd}"
        return s
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([r["step"] for r in train], [r[names.LOSS] for r in train], label="training")
    ax1.plot([r["step"] for r in evals], [r[names.LOSS] for r in evals], "o-", ms=3, label="validation")
    ax1.set(xlabel="step", ylabel="loss (nats)", title="loss")
    ax1.legend()
    ax2.plot([r["step"] for r in evals], [np.exp(r[names.LOSS]) for r in evals], "o-", ms=3)
    ax2.set(xlabel="step", ylabel="validation perplexity", yscale="log", title="validation perplexity")
    s.images.append(_save(fig, out_dir, "training.png"))
    last = train[-1] if train else {}
    if evals:
        s.text.append(f"Step {evals[-1]['step']}: validation loss {evals[-1][names.LOSS]:.4f}, perplexity "
                      f"{np.exp(evals[-1][names.LOSS]):.3f}" + (f"; training loss {last[names.LOSS]:.4f} at step "
                                                                 f"{last['step']}" if last else "") + ".")
    return s


def activation(wd: str, logs: dict, out_dir: str) -> Section:
    """Per-layer activation ratio over training (a ≠ 0, or above train.record_threshold)."""
    s = Section("Activation ratio per layer over training")
    rows = [r for r in by_step(logs.get(names.TRAIN, {})) if names.ACTIVATION_RATIO in r]
    if not rows:
        s.missing = "train with train.record=mask (the default) to log it"
        return s
    ratio = np.asarray([r[names.ACTIVATION_RATIO] for r in rows])
    fig, ax = _plt().subplots(figsize=(6, 3.6))
    for layer in range(ratio.shape[1]):
        ax.plot([r["step"] for r in rows], ratio[:, layer], label=f"layer {layer}")
    ax.set(xlabel="step", ylabel="activation ratio", title="activation ratio (training batches)")
    ax.legend(fontsize=7)
    s.images.append(_save(fig, out_dir, "activation_ratio.png"))
    s.tables.append((["layer", "first logged", "last logged"],
                     [[i, float(ratio[0, i]), float(ratio[-1, i])] for i in range(ratio.shape[1])]))
    return s


def unit_use(wd: str, logs: dict, out_dir: str) -> Section:
    """W&A per-token / per-sequence / per-batch use and turn-on / turn-off."""
    from sparsity_jax.report.layer_patterns import layer_patterns_report

    s = Section("Hidden-unit use per token, sequence and batch (W&A)")
    if not logs.get(names.UNITS):
        s.missing = "train with train.metrics_every > 0, e.g. sparsity-jax train --config.train.metrics_every=50"
        return s
    result = layer_patterns_report(wd, out_dir)
    last = result["last"]
    s.text.append(f"Per-layer use at step {result['last_step']} (% of F; first metrics step {result['first_step']} "
                  "in layer_patterns.md).")
    s.tables.append((list(last[0]), [list(r.values()) for r in last]))
    s.images.append("use_over_training.png")
    return s


def sparsity_search(wd: str, out_dir: str) -> Section:
    """CETT thresholds, PPL-p% sparsity and the baselines' Pareto curves."""
    s = Section("CETT, PPL-p% sparsity and Pareto curves")
    ppl, cett = _json(os.path.join(out_dir, "ppl.json")), _json(os.path.join(wd, "cett.json"))
    if ppl is None and cett is None:
        s.missing = f"sparsity-jax evaluate --workdir {wd} (PPL-1%), or sparsity-jax cett --workdir {wd} --cett 0.2"
        return s
    if ppl is not None:
        s.tables.append((["p", "CETT_p", "PPL ratio", "activation ratio", "evaluations"],
                         [[q["p"], q["cett"], q["ppl_ratio"], q["activation_ratio"], q["evaluations"]]
                          for q in ppl["search"]]))
        s.images += [f for f in ("activation_over_training.png", "layer_ratios.png", "pareto.png",
                                 "neuron_frequency.png") if os.path.isfile(os.path.join(out_dir, f))]
    if cett is not None:
        s.text.append(f"cett.json: step {cett['step']}, target CETT {cett['target_cett']:g}.")
        s.tables.append((["layer", "threshold", "realised CETT", "sparsity"],
                         [[i, t, c, sp] for i, (t, c, sp) in enumerate(zip(cett["threshold"], cett["cett"],
                                                                           cett["sparsity"]))]))
    return s


def scaling(wd: str, out_dir: str) -> Section:
    """Activation ratio over checkpoints and its scaling-law fit (Sparsing Law §4.2)."""
    from sparsity_jax.scaling.plots import plot_activation_curves
    from sparsity_jax.scaling.runs import fit_run

    s = Section("Activation ratio over checkpoints and its scaling fit")
    ev = _json(os.path.join(wd, "eval.json"))
    if ev is None:
        s.missing = f"sparsity-jax evaluate --workdir {wd}"
        return s
    rows = ev["checkpoints"]
    s.tables.append((["step", "training tokens", "val loss", "val PPL", "ratio (a≠0)", "ratio (PPL-1%)"],
                     [[r["step"], r.get("train_tokens", ""), r[names.LOSS], r[names.PERPLEXITY],
                       r.get("activation_ratio_cett0", ""), r.get("ppl_p", {}).get("1", "")] for r in rows]))
    try:
        pts, fit = fit_run(wd)
    except UserError as e:
        s.text.append(f"No fit: {e}")
        return s
    name = os.path.basename(os.path.normpath(wd))
    plot_activation_curves({name: (pts["tokens"], pts["ratio"])}, {name: fit}, os.path.join(out_dir, "scaling.png"))
    s.images.append("scaling.png")
    p = fit.params
    s.text.append(f"{fit.form} law fitted to the PPL-1% activation ratio of {fit.n_points} checkpoints: limit "
                  f"A0 = {p['A0']:.4f} ± {fit.stderr['A0']:.4f}, α = {p['alpha']:.3f}, c = {p['c']:.3g}"
                  + (f", b = {p['b']:.3f}" if "b" in p else "") + f"; MAE {fit.mae:.2e}.")
    return s


def ssd(wd: str, out_dir: str, method: str | None) -> Section:
    s = Section("SSD: sparse phases, ARI, speed-up, sparse inference")
    if method != "ssd":
        s.missing = f"not an SSD run (ssd.method={method}); sparsity-jax train --config configs/ssd/tiny.py:ssd trains one"
        return s
    result = _json(os.path.join(out_dir, "ssd.json"))
    if result is None:
        s.missing = f"sparsity-jax ssd --workdir {wd}"
        return s
    r = result["ssd"]
    s.text.append(f"Sparse share {r['sparse_share']:.2f}, FLOPs speed-up {r['flops']['speedup'] or float('nan'):.3f}.")
    s.images += [f for f in ("ppl_over_training.png", "ari.png", "speedup.png", "ppl_vs_k.png")
                 if os.path.isfile(os.path.join(out_dir, f))]
    return s


def optional(title: str, out_dir: str, file: str, command: str, images: tuple[str, ...]) -> Section:
    """A section that a command writes as `file` + `images` into the report directory."""
    s = Section(title)
    data = _json(os.path.join(out_dir, file))
    if data is None:
        s.missing = command
        return s
    s.text += [str(t) for t in data.get("summary", [])]
    s.images += [f for f in images if os.path.isfile(os.path.join(out_dir, f))]
    return s


def run_report(wd: str, out_dir: str | None = None) -> tuple[list[Section], list[str]]:
    """Writes index.html and report.md of the run in `wd`; returns (sections, written paths)."""
    from sparsity_jax.settings import from_saved

    if not os.path.isdir(wd):
        raise UserError(f"workdir {wd} does not exist; pass the directory of a training run.")
    out_dir = out_dir or os.path.join(wd, "report")
    cfg = _json(os.path.join(wd, "config.json"))
    method = from_saved(cfg).ssd.method if cfg is not None else None
    logs = read_metrics(wd) if os.path.isfile(os.path.join(wd, "metrics.jsonl")) else {}
    os.makedirs(out_dir, exist_ok=True)
    sections = [
        training(wd, logs, out_dir), activation(wd, logs, out_dir), unit_use(wd, logs, out_dir),
        sparsity_search(wd, out_dir), scaling(wd, out_dir), ssd(wd, out_dir, method),
        optional("Predictivity (ReLU² Wins §4)", out_dir, "predictor.json",
                 f"sparsity-jax predictor --workdir {wd} --cett 0.2",
                 ("predictor_layers.png", "predictor_topk.png", "predictor_ppl.png")),
        optional("Hardware affinity (ReLU² Wins §4)", out_dir, "affinity.json",
                 f"sparsity-jax affinity --workdir {wd} --cett 0.2",
                 ("reuse_ratio.png", "coactivation_gap.png", "hot_neurons.png")),
    ]
    title = f"sparsity_jax run report: {os.path.basename(os.path.abspath(wd))}"
    paths = [os.path.join(out_dir, "index.html"), os.path.join(out_dir, "report.md")]
    with open(paths[0], "w") as f:
        f.write(page(title, sections))
    with open(paths[1], "w") as f:
        f.write(markdown(title, sections))
    return sections, paths

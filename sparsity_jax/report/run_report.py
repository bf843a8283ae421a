"""One report per run: every measurement a workdir holds, as RUN/report/index.html and
report.md. Reads what training and the evaluation commands left in the workdir
(metrics.jsonl, eval.json, cett.json, report/*.json); a section without data names the
command that produces it. Results written before the `target_cett` / `realised_cett`
vocabulary (a bare "cett") are read through `_result`."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from sparsity_jax.errors import UserError  # noqa: E402
from sparsity_jax.report.layer_patterns import layer_patterns_report  # noqa: E402
from sparsity_jax.report.layers import layer_curves  # noqa: E402
from sparsity_jax.report.render import Section, markdown, page  # noqa: E402
from sparsity_jax.runtime import names  # noqa: E402
from sparsity_jax.runtime.logs import by_step, read_metrics  # noqa: E402
from sparsity_jax.runtime.workdir import PathLike, Workdir, as_path, read_json, save_figure, write_text  # noqa: E402

# what a bare "cett" meant in the files written before the two names: cett.json held the
# realised CETT per layer; ppl.json's search rows and points held the target (CETT_p)
LEGACY_CETT = {"cett.json": "realised_cett", "ppl.json": "target_cett"}


def _renamed(obj, bare: str):
    """`obj` with every dict's bare "cett" (and "cett_upper") named `bare` (`bare`_upper)."""
    if isinstance(obj, list):
        return [_renamed(v, bare) for v in obj]
    if not isinstance(obj, dict):
        return obj
    names_ = {"cett": bare, "cett_upper": f"{bare}_upper"} if bare not in obj else {}
    return {names_.get(k, k): _renamed(v, bare) for k, v in obj.items()}


def _result(path: epath.Path) -> dict | None:
    """A result file (None when absent); old files' bare "cett" keys renamed (`LEGACY_CETT`)."""
    if not path.is_file():
        return None
    data = read_json(path)
    return _renamed(data, LEGACY_CETT[path.name]) if path.name in LEGACY_CETT else data


def _images(out: epath.Path, files) -> list[str]:
    return [f for f in files if (out / f).is_file()]


def training(wd: Workdir, logs: dict, out: epath.Path) -> Section:
    """Training loss and validation loss / perplexity over steps."""
    s = Section("Training and validation loss")
    train, evals = by_step(logs.get(names.TRAIN, {})), by_step(logs.get(names.EVAL, {}))
    if not train and not evals:
        s.missing = f"no training logged here (an imported model has none); sparsity-jax train --workdir {wd} trains one"
        return s
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([r["step"] for r in train], [r[names.LOSS] for r in train], label="training")
    ax1.plot([r["step"] for r in evals], [r[names.LOSS] for r in evals], "o-", ms=3, label="validation")
    ax1.set(xlabel="step", ylabel="loss (nats)", title="loss")
    ax1.legend()
    ax2.plot([r["step"] for r in evals], [np.exp(r[names.LOSS]) for r in evals], "o-", ms=3)
    ax2.set(xlabel="step", ylabel="validation perplexity", yscale="log", title="validation perplexity")
    s.images.append(save_figure(fig, out / "training.png", tight=True).name)
    last = train[-1] if train else {}
    if evals:
        s.text.append(f"Step {evals[-1]['step']}: validation loss {evals[-1][names.LOSS]:.4f}, perplexity "
                      f"{np.exp(evals[-1][names.LOSS]):.3f}" + (f"; training loss {last[names.LOSS]:.4f} at step "
                                                                 f"{last['step']}" if last else "") + ".")
    return s


def activation(wd: Workdir, logs: dict, out: epath.Path) -> Section:
    """Per-layer activation ratio over training (a ≠ 0, or above train.record_threshold)."""
    s = Section("Activation ratio per layer over training")
    rows = [r for r in by_step(logs.get(names.TRAIN, {})) if names.ACTIVATION_RATIO in r]
    if not rows:
        s.missing = "train with train.record=mask (the default) to log it"
        return s
    ratio = np.asarray([r[names.ACTIVATION_RATIO] for r in rows])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    layer_curves(fig, ax, [r["step"] for r in rows], ratio.T, xlabel="step", value="activation ratio",
                 title="activation ratio (training batches)")
    s.images.append(save_figure(fig, out / "activation_ratio.png", tight=True).name)
    s.tables.append((["layer", "first logged", "last logged"],
                     [[i, float(ratio[0, i]), float(ratio[-1, i])] for i in range(ratio.shape[1])]))
    return s


def unit_use(wd: Workdir, logs: dict, out: epath.Path) -> Section:
    """W&A per-token / per-sequence / per-batch use and turn-on / turn-off."""
    s = Section("Hidden-unit use per token, sequence and batch (W&A)")
    if not logs.get(names.UNITS):
        s.missing = "train with train.metrics_every > 0, e.g. sparsity-jax train --config.train.metrics_every=50"
        return s
    result = layer_patterns_report(wd, out)
    last = result["last"]
    s.text.append(f"Per-layer use at step {result['last_step']} (% of F; first metrics step {result['first_step']} "
                  "in layer_patterns.md).")
    s.tables.append((list(last[0]), [list(r.values()) for r in last]))
    s.images.append("use_over_training.png")
    return s


def sparsity_search(wd: Workdir, out: epath.Path) -> Section:
    """CETT thresholds, PPL-p% sparsity and the baselines' Pareto curves."""
    s = Section("CETT, PPL-p% sparsity and Pareto curves")
    ppl, cett = _result(out / wd.ppl_json.name), _result(wd.cett_json)
    if ppl is None and cett is None:
        s.missing = f"sparsity-jax evaluate --workdir {wd} (PPL-1%), or sparsity-jax cett --workdir {wd} --cett 0.2"
        return s
    if ppl is not None:
        s.tables.append((["p", "CETT_p", "PPL ratio", "activation ratio", "evaluations"],
                         [[q["p"], q["target_cett"], q["ppl_ratio"], q["activation_ratio"], q["evaluations"]]
                          for q in ppl["search"]]))
        s.images += _images(out, ("activation_over_training.png", "layer_ratios.png", "pareto.png",
                                  "neuron_frequency.png"))
    if cett is not None:
        s.text.append(f"cett.json: step {cett['step']}, target CETT {cett['target_cett']:g}.")
        s.tables.append((["layer", "threshold", "realised CETT", "sparsity"],
                         [[i, t, c, sp] for i, (t, c, sp) in enumerate(zip(cett["threshold"], cett["realised_cett"],
                                                                           cett["sparsity"]))]))
    return s


def scaling(wd: Workdir, out: epath.Path) -> Section:
    """Activation ratio over checkpoints and its scaling-law fit (Sparsing Law §4.2)."""
    # local: scaling loads scipy and matplotlib, which a report without checkpoints does without
    from sparsity_jax.scaling.plots import plot_activation_curves
    from sparsity_jax.scaling.runs import fit_run

    s = Section("Activation ratio over checkpoints and its scaling fit")
    ev = _result(wd.eval_json)
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
    plot_activation_curves({wd.name: (pts["tokens"], pts["ratio"])}, {wd.name: fit}, out / "scaling.png")
    s.images.append("scaling.png")
    p = fit.params
    s.text.append(f"{fit.form} law fitted to the PPL-1% activation ratio of {fit.n_points} checkpoints: limit "
                  f"A0 = {p['A0']:.4f} ± {fit.stderr['A0']:.4f}, α = {p['alpha']:.3f}, c = {p['c']:.3g}"
                  + (f", b = {p['b']:.3f}" if "b" in p else "") + f"; MAE {fit.mae:.2e}.")
    return s


def ssd(wd: Workdir, out: epath.Path, method: str | None) -> Section:
    s = Section("SSD: sparse phases, ARI, speed-up, sparse inference")
    if method != "ssd":
        s.missing = f"not an SSD run (method.name={method}); sparsity-jax train --config configs/ssd/tiny.py:ssd trains one"
        return s
    result = _result(out / wd.ssd_json.name)
    if result is None:
        s.missing = f"sparsity-jax ssd --workdir {wd}"
        return s
    r = result["ssd"]
    s.text.append(f"Sparse share {r['sparse_share']:.2f}, FLOPs speed-up {r['flops']['speedup'] or float('nan'):.3f}.")
    s.images += _images(out, ("ppl_over_training.png", "ari.png", "speedup.png", "ppl_vs_k.png"))
    return s


def optional(title: str, out: epath.Path, file: str, command: str, images: tuple[str, ...]) -> Section:
    """A section that a command writes as `file` + `images` into the report directory."""
    s = Section(title)
    data = _result(out / file)
    if data is None:
        s.missing = command
        return s
    s.text += [str(t) for t in data.get("summary", [])]
    s.images += _images(out, images)
    return s


def run_report(workdir: PathLike, out_dir: PathLike | None = None) -> tuple[list[Section], list[str]]:
    """Writes index.html and report.md of the run in `workdir` (default: into its report
    directory); returns (sections, written paths)."""
    # local: ssd_report loads matplotlib at import; this module loads it only to draw (`_plt`)
    from sparsity_jax.report.ssd_report import run_method

    wd = Workdir(workdir)
    if not wd.exists():
        raise UserError(f"workdir {workdir} does not exist; pass the directory of a training run.")
    out = wd.report if out_dir is None else as_path(out_dir)
    method = run_method(wd)
    logs = read_metrics(wd) if wd.metrics.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        training(wd, logs, out), activation(wd, logs, out), unit_use(wd, logs, out),
        sparsity_search(wd, out), scaling(wd, out), ssd(wd, out, method),
        optional("Predictivity (ReLU² Wins §4)", out, wd.predictor_json.name,
                 f"sparsity-jax predictor --workdir {wd} --cett 0.2",
                 ("predictor_layers.png", "predictor_topk.png", "predictor_ppl.png")),
        optional("Hardware affinity (ReLU² Wins §4)", out, wd.affinity_json.name,
                 f"sparsity-jax affinity --workdir {wd} --cett 0.2",
                 ("reuse_ratio.png", "coactivation_gap.png", "hot_neurons.png")),
    ]
    title = f"sparsity_jax run report: {wd.name}"
    paths = [out / wd.index_html.name, out / wd.report_md.name]
    write_text(paths[0], page(title, sections))
    write_text(paths[1], markdown(title, sections))
    return sections, [str(p) for p in paths]

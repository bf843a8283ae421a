"""JSON + PNG report of an SSD run (SSD §4–5, Fig. 4a, Fig. 5, Fig. 6).

Reads the run's `metrics.jsonl` (splits "eval", "train", "method"; the last record of each
step wins, so resumed runs read cleanly) and the sparse-inference results of
`sparsity-jax ssd`. Files under the output directory:

  ssd.json              everything below as numbers
  ppl_over_training.png validation PPL over training, sparse phases shaded (Fig. 6),
                        the --compare dense run's curve when given
  ari.png               ARI of consecutive clusterings at each monitor step, τ and switches
  speedup.png           cumulative FLOPs speed-up over all-dense training, and wall-clock
                        per phase (dense / sparse / monitoring)
  ppl_vs_k.png          validation PPL vs experts per token: SSD's own experts vs the dense
                        run MoEfied (Fig. 4a), dynamic top-k points (Fig. 5)

Only for method.name=ssd runs (`check_ssd_run`: baselines raise a UserError; their
totals are in bench/ssd_run.py). Phases come from the "method" records: `ssd_switch` +1
(to sparse) / −1 (to dense) after the logged step, `ssd_sparse` for the phase of each
logged step.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsity_jax.errors import UserError  # noqa: E402
from sparsity_jax.runtime import names  # noqa: E402
from sparsity_jax.runtime.logs import read_metrics  # noqa: E402
from sparsity_jax.runtime.workdir import PathLike, Workdir, as_path, read_json, save_figure, write_json  # noqa: E402
from sparsity_jax.settings import from_saved  # noqa: E402

FILES = ("ssd.json", "ppl_over_training.png", "ari.png", "speedup.png", "ppl_vs_k.png")


def run_method(workdir: PathLike) -> str | None:
    """The `method.name` a workdir was trained with (config.json; None without one)."""
    config = Workdir(workdir).config
    if not config.is_file():
        return None
    return from_saved(read_json(config)).method.name


def check_ssd_run(workdir: PathLike) -> None:
    """UserError unless the workdir is an method.name=ssd run: phases, switches and the
    sparse share come from SSD's switch records, which baselines do not log."""
    method = run_method(workdir)
    if method not in (None, "ssd"):
        raise UserError(f"sparsity-jax ssd reports method.name=ssd runs; {workdir} was trained with "
                        f"method.name={method} — use bench/ssd_run.py {workdir} for its FLOPs/wall-clock")


def phases(ssd: dict[int, dict], last_step: int) -> list[list]:
    """[kind, start, end) of every phase from the switches (steps completed at switch)."""
    out, kind, start = [], "dense", 0
    for step in sorted(ssd):
        switch = ssd[step].get(names.SSD_SWITCH)
        if switch:
            new = "sparse" if switch > 0 else "dense"
            if new != kind:
                out.append([kind, start, step])
                kind, start = new, step
    out.append([kind, start, max(last_step, start)])
    return [p for p in out if p[2] > p[1]]


def _wall_clock(ssd: dict[int, dict], train: dict[int, dict], spans: list[list]) -> dict:
    """Seconds per phase and the estimated wall-clock speed-up over all-dense training."""
    last = ssd[max(ssd)] if ssd else {}
    secs = dict(last.get(names.SSD_SECONDS) or {})
    steps = dict(last.get(names.SSD_STEPS) or {})
    if not steps:  # older logs: steps per phase from the phases, time from train step_time
        steps = {kind: float(sum(e - s for k, s, e in spans if k == kind)) for kind in ("dense", "sparse")}
    kind_of = lambda step: next((k for k, s, e in spans if s < step <= e), "dense")  # noqa: E731
    step_time = {kind: [r[names.STEP_TIME] for st, r in train.items() if names.STEP_TIME in r and kind_of(st) == kind]
                 for kind in ("dense", "sparse")}
    per_step = {k: (secs[k] / steps[k] if steps.get(k) and k in secs else
                    (float(np.median(v)) if v else None)) for k, v in step_time.items()}
    # actual time: the logged seconds of training (steps, compiles, monitoring; not the
    # evaluations, checkpoint saves and metric writes, which an all-dense run makes too), else
    # step times × steps
    train_secs = {k: v for k, v in secs.items() if k not in names.ASIDE}
    total = sum(train_secs.values()) if secs else sum(steps[k] * per_step[k] for k in steps if per_step.get(k)) or None
    out = {"seconds": secs or None, "steps": steps, "seconds_per_step": per_step,
           "median_logged_step_time": {k: (float(np.median(v)) if v else None) for k, v in step_time.items()}}
    if per_step["dense"] and per_step["sparse"]:
        out["sparse_step_speedup"] = per_step["dense"] / per_step["sparse"]
    if total and per_step["dense"]:
        out["run_speedup_vs_all_dense"] = per_step["dense"] * sum(steps.values()) / total
    return out


def training_summary(workdir: PathLike) -> dict:
    """Validation curve, phases, ARI trace, FLOPs and wall-clock of an SSD run's logs."""
    m = read_metrics(workdir)
    evals, ssd, train = m.get(names.EVAL, {}), m.get(names.METHOD, {}), m.get(names.TRAIN, {})
    last_step = max([0, *evals, *ssd, *train])
    spans = phases(ssd, last_step)
    last = ssd[max(ssd)] if ssd else {}
    sparse_steps = sum(e - s for k, s, e in spans if k == "sparse")
    return {
        "workdir": str(Workdir(workdir)), "last_step": last_step,
        "eval": [{"step": s, "loss": r[names.LOSS], "perplexity": float(np.exp(r[names.LOSS]))}
                 for s, r in sorted(evals.items())],
        "phases": spans, "sparse_share": sparse_steps / max(last_step, 1),
        "ari": [{"step": s, "ari": r[names.SSD_ARI]} for s, r in sorted(ssd.items()) if names.SSD_ARI in r],
        "switches": [{"step": s, "to": "sparse" if r[names.SSD_SWITCH] > 0 else "dense"}
                     for s, r in sorted(ssd.items()) if r.get(names.SSD_SWITCH)],
        "flops": {"cumulative": last.get(names.SSD_CUM_FLOPS), "speedup": last.get(names.SSD_FLOPS_SPEEDUP),
                  "trace": [[s, r[names.SSD_FLOPS_SPEEDUP]] for s, r in sorted(ssd.items())
                            if names.SSD_FLOPS_SPEEDUP in r]},
        "wall_clock": _wall_clock(ssd, train, spans),
    }


def _shade(ax, spans: list[list]) -> None:
    for i, (kind, start, end) in enumerate(k for k in spans if k[0] == "sparse"):
        ax.axvspan(start, end, color="0.85", label="sparse phase" if i == 0 else None)


def _ppl_over_training(summary: dict, compare: dict | None, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    _shade(ax, summary["phases"])
    for name, s in (("SSD", summary), ("dense", compare)):
        if s and s["eval"]:
            ax.plot([r["step"] for r in s["eval"]], [r["perplexity"] for r in s["eval"]], "o-", ms=3, label=name)
    ax.set(xlabel="step", ylabel="validation PPL", title="validation PPL (grey: sparse phases)", yscale="log")
    ax.legend()
    save_figure(fig, path, tight=True)


def _ari(summary: dict, tau: float | None, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    _shade(ax, summary["phases"])
    pts = summary["ari"]
    ax.plot([p["step"] for p in pts], [p["ari"] for p in pts], "o-", label="ARI (consecutive clusterings)")
    if tau is not None:
        ax.axhline(tau, color="k", ls=":", label=f"τ = {tau:g}")
    for sw in summary["switches"]:
        ax.axvline(sw["step"], color="C3" if sw["to"] == "sparse" else "C2", lw=0.8)
    ax.set(xlabel="step", ylabel="mean ARI over layers", title="activation-pattern similarity", ylim=(-0.05, 1.05))
    ax.legend()
    save_figure(fig, path, tight=True)


def _speedup(summary: dict, path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    trace = np.asarray(summary["flops"]["trace"] or np.zeros((0, 2)))
    _shade(ax1, summary["phases"])
    if len(trace):
        ax1.plot(trace[:, 0], trace[:, 1], "-")
    ax1.set(xlabel="step", ylabel="dense FLOPs / actual FLOPs", title="cumulative FLOPs speed-up")
    secs = summary["wall_clock"]["seconds"] or {}
    colors = {"dense": "C0", "sparse": "C1", "monitor": "0.6"}
    ax2.bar(list(secs), list(secs.values()), color=[colors.get(k, "C2") for k in secs])
    sp = summary["wall_clock"].get("run_speedup_vs_all_dense")
    ax2.set(ylabel="seconds", title="wall-clock per phase" + (f" (est. speed-up {sp:.2f}×)" if sp else ""))
    save_figure(fig, path, tight=True)


def _ppl_vs_k(runs: dict[str, dict], path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, res) in enumerate(runs.items()):
        fixed = [r for r in res["rows"] if r["drop_share"] == 0]
        ax.plot([r["k"] for r in fixed], [r["perplexity"] for r in fixed], "o-", color=f"C{i}",
                label=f"{name} ({res['structure']} experts)")
        for share in sorted({r["drop_share"] for r in res["rows"]} - {0.0}):
            dyn = [r for r in res["rows"] if r["drop_share"] == share]
            ax.plot([r["experts_per_token"] for r in dyn], [r["perplexity"] for r in dyn], "^--", color=f"C{i}",
                    alpha=0.6, label=f"{name} dynamic top-k, drop {share:g}")
        ax.axhline(res["dense"]["perplexity"], color=f"C{i}", ls=":", lw=0.8)
    ax.set(xlabel="experts per token (of N)", ylabel="validation PPL", title="sparse inference (dotted: dense)",
           xscale="log", yscale="log")
    ax.legend(fontsize=7)
    save_figure(fig, path, tight=True)


def ssd_report(workdir: PathLike, out_dir: PathLike, *, inference: dict[str, dict] | None = None,
               compare: PathLike | None = None, tau: float | None = None) -> dict:
    """Writes `FILES` into out_dir; returns the JSON dict.

    inference: {run name: `workflows.ssd_inference.SparseInference` JSON} (SSD first, then the
    MoEfied dense run); compare: the dense run's workdir for the PPL curve. workdir must
    be an method.name=ssd run (`check_ssd_run`); compare may be any run.
    """
    check_ssd_run(workdir)
    summary = training_summary(workdir)
    dense = training_summary(compare) if compare else None
    out = as_path(out_dir)
    result = {"ssd": summary, "dense": dense, "ari_threshold": tau, "inference": inference or {}}
    write_json(out / "ssd.json", result)
    _ppl_over_training(summary, dense, out / "ppl_over_training.png")
    _ari(summary, tau, out / "ari.png")
    _speedup(summary, out / "speedup.png")
    if inference:
        _ppl_vs_k(inference, out / "ppl_vs_k.png")
    return result

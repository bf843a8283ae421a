"""Report of hidden-unit use over training, in the shape of the layer-patterns paper
(W&A Tables 1–3 and Figures 1–2, 5–9): per-layer per-token / per-sequence / per-batch
use (% of F), their ratios, within-sequence use percentiles and turn-on / turn-off, as
JSON + Markdown; PNGs of the three use levels per layer over training; and the loss
curves of several runs on one figure (the dead-unit vs random masking experiment, §4.1).
Reads only `metrics.jsonl`, so it works on any run's workdir.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsity_jax.errors import UserError  # noqa: E402
from sparsity_jax.report.layers import layer_curves  # noqa: E402
from sparsity_jax.runtime import names  # noqa: E402
from sparsity_jax.runtime.logs import by_step, read_metrics  # noqa: E402
from sparsity_jax.runtime.workdir import PathLike, Workdir, as_path, save_figure, write_json, write_text  # noqa: E402

USE = ((names.ACTIVATION_RATIO, "per-token"), (names.USE_PER_SEQUENCE, "per-sequence"),
       (names.USE_PER_BATCH, "per-batch"))
PCT = names.SEQ_USE_PERCENTILE
# (title, key, percentile or None, scale)
TABLE_COLUMNS = (
    ("per-token %", names.ACTIVATION_RATIO, None, 100), ("per-seq %", names.USE_PER_SEQUENCE, None, 100),
    ("per-batch %", names.USE_PER_BATCH, None, 100), ("token/seq", names.USE_TOKEN_OVER_SEQUENCE, None, 1),
    ("seq/batch", names.USE_SEQUENCE_OVER_BATCH, None, 1), ("p50 %", PCT, "50", 100), ("p75 %", PCT, "75", 100),
    ("p90 %", PCT, "90", 100), ("on in batch 0 %", names.ON_IN_FIRST, None, 100),
    ("turned on %", names.TURNED_ON, None, 100), ("turned off %", names.TURNED_OFF, None, 100),
    ("ever used %", names.EVER_USED, None, 100), ("masked %", names.MASKED_FRACTION, None, 100),
)


def layer_table(record: dict) -> list[dict[str, float]]:
    """One row per layer of a "units" record."""
    rows = []
    for layer in range(len(record[names.ACTIVATION_RATIO])):
        row = {"layer": layer}
        for title, key, sub, scale in TABLE_COLUMNS:
            value = record.get(key)
            value = value.get(sub) if isinstance(value, dict) else value
            if value is not None:
                row[title] = round(scale * value[layer], 3)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_use(units: list[dict], path: PathLike) -> None:
    steps = [r["step"] for r in units]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), sharex=True)
    for i, (ax, (key, title)) in enumerate(zip(axes, USE)):
        use_LxS = 100 * np.asarray([r[key] for r in units], float).T
        if layer_curves(fig, ax, steps, use_LxS, xlabel="step", value="% of F", title=f"{title} use (% of F)",
                        legend=i == 0):
            ax.grid(alpha=0.3)
    save_figure(fig, path, tight=True)


def plot_losses(runs: dict[str, list[dict]], path: PathLike, mask_step: int | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, train in runs.items():
        ax.plot([r["step"] for r in train], [r[names.LOSS] for r in train], label=name)
    if mask_step:
        ax.axvline(mask_step, color="gray", ls="--", label=f"mask applied (step {mask_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path, tight=True)


def layer_patterns_report(workdir: PathLike, out_dir: PathLike | None = None) -> dict:
    """Writes layer_patterns.{json,md} and use_over_training.png (default: into the run's
    report directory); returns the table."""
    wd = Workdir(workdir)
    units = by_step(read_metrics(wd).get(names.UNITS, {}))
    if not units:
        raise UserError(f"{workdir} has no hidden-unit metrics; train with train.metrics_every > 0")
    out = wd.report if out_dir is None else as_path(out_dir)
    first, last = layer_table(units[0]), layer_table(units[-1])
    result = {"workdir": str(wd), "first_step": units[0]["step"], "last_step": units[-1]["step"],
              "first": first, "last": last}
    write_json(out / wd.layer_patterns_json.name, result)
    write_text(out / wd.layer_patterns_md.name,
               f"# Hidden-unit use per layer ({workdir})\n\n## Step {units[-1]['step']} (last)\n\n"
               + markdown(last) + f"\n\n## Step {units[0]['step']} (first metrics step)\n\n" + markdown(first) + "\n")
    plot_use(units, out / "use_over_training.png")
    return result


def compare_losses(workdirs: dict[str, PathLike], path: PathLike, mask_step: int | None = None) -> dict[str, float]:
    """One PNG with the training-loss curves of several runs; returns each run's final loss."""
    runs = {name: by_step(read_metrics(wd).get(names.TRAIN, {})) for name, wd in workdirs.items()}
    plot_losses(runs, path, mask_step)
    return {name: train[-1][names.LOSS] for name, train in runs.items() if train}

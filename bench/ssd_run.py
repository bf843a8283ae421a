"""Whole-run FLOPs speed-up of an SSD (or baseline) run from its workdir (SSD §5, Fig. 3).

Reads what the trainer logged (metrics.jsonl: the `ssd` records with the cumulative
FLOPs of the compiled steps from XLA's cost analysis, their all-dense equivalent, steps
and wall-clock per phase; summary.json: the final validation loss) and prints

    whole-run FLOPs speed-up = all-dense FLOPs / FLOPs spent    (target >= 1.4x, paper 1.44x)

with the sparse share of steps, the FLOPs of one sparse step / one dense step, the
wall-clock per phase (dense, sparse, compile = the first step of each compiled variant,
monitor = clustering + switches, host work), and,
given a second (dense) workdir, the validation loss / perplexity and wall-clock of both.

    .venv/bin/python bench/ssd_run.py runs/ssd_tiny [runs/ssd_tiny_dense]
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.runtime import names  # noqa: E402

TARGET, PAPER = 1.4, 1.44


def _records(workdir: str) -> dict[str, list[dict]]:
    """{split: records sorted by step}, the last record of each step (a resumed run re-logs
    the steps since its checkpoint); the same reader as `sparsity-jax ssd`."""
    from sparsity_jax.errors import UserError
    from sparsity_jax.runtime.logs import by_step, read_metrics

    try:
        by_split = read_metrics(workdir)
    except UserError as e:
        sys.exit(f"{e} (train with: sparsity-jax train --config configs/ssd/tiny.py:ssd --workdir {workdir})")
    return {split: by_step(recs) for split, recs in by_split.items()}


def train_seconds(train: list[dict]) -> float:
    """Σ step_time · (step − previous logged step) over the train records sorted by step
    (step_time is the mean over the steps since the previous log line)."""
    prev, seconds = 0, 0.0
    for r in train:
        if names.STEP_TIME in r:
            seconds, prev = seconds + r[names.STEP_TIME] * (r["step"] - prev), r["step"]
    return seconds


def whole_run(workdir: str) -> dict:
    """Totals of a run: FLOPs speed-up, steps / seconds per phase, final eval, ARI trace."""
    recs = _records(workdir)
    evals = recs.get(names.EVAL, [])
    out = {"workdir": workdir, "final_eval": evals[-1] if evals else None,
           "train_seconds": train_seconds(recs.get(names.TRAIN, []))}
    ssd = recs.get(names.METHOD, [])
    if not ssd:
        return out
    last = ssd[-1]
    steps = {k: int(v) for k, v in last[names.SSD_STEPS].items()}
    seconds = dict(last[names.SSD_SECONDS])
    total_steps = sum(steps.values())
    dense_equiv = last[names.SSD_FLOPS_SPEEDUP] * last[names.SSD_CUM_FLOPS]
    dense_step = dense_equiv / max(total_steps, 1)
    other = {k: v for k, v in steps.items() if k != "dense"}
    other_steps = sum(other.values())
    other_step = (last[names.SSD_CUM_FLOPS] - steps.get("dense", 0) * dense_step) / other_steps if other_steps else None
    out.update(step=last["step"], speedup=last[names.SSD_FLOPS_SPEEDUP], flops=last[names.SSD_CUM_FLOPS],
               dense_equiv_flops=dense_equiv, steps=steps, seconds=seconds,
               sparse_share=other_steps / max(total_steps, 1),
               step_flops_ratio=None if other_step is None else other_step / dense_step,
               switches=[(r["step"], r[names.SSD_SWITCH]) for r in ssd if names.SSD_SWITCH in r],
               ari=[(r["step"], round(r[names.SSD_ARI], 3)) for r in ssd if names.SSD_ARI in r])
    return out


def _fmt_eval(ev: dict | None) -> str:
    return "n/a" if ev is None else f"val loss {ev['loss']:.4f}  ppl {ev['perplexity']:.3f}  (step {ev['step']})"


def report(workdir: str, dense_workdir: str | None = None) -> str:
    r = whole_run(workdir)
    lines = [f"run {workdir}: {_fmt_eval(r['final_eval'])}  train wall-clock {r['train_seconds']:.0f} s"]
    if "speedup" not in r:
        return "\n".join(lines + ["  no ssd records: a dense run (method.name=dense) has speed-up 1.0 by definition"])
    sec = r["seconds"]
    per = {k: sec.get(k, 0.0) / n for k, n in r["steps"].items() if n}
    lines += [
        f"  steps per phase {r['steps']}  (non-dense share {r['sparse_share']:.3f})",
        f"  one non-dense step / one dense step, FLOPs: s = {r['step_flops_ratio']:.3f}; at sparse share r = 0.5 the "
        f"speed-up can be at most 1/(1 − r(1 − s)) = {1 / (1 - 0.5 * (1 - r['step_flops_ratio'])):.3f}x"
        if r["step_flops_ratio"] else "",
        f"  wall-clock per phase [s] " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(sec.items()))
        + f"  (total {sum(sec.values()):.1f}); per step " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(per.items())),
        f"  switches {r['switches']}" if r["switches"] else "",
        f"  whole-run FLOPs {r['flops'] / 1e12:.2f} T vs all-dense {r['dense_equiv_flops'] / 1e12:.2f} T",
        f"  whole-run FLOPs speed-up: {r['speedup']:.3f}x   (target >= {TARGET}x: "
        f"{'met' if r['speedup'] >= TARGET else 'NOT met'}; paper {PAPER}x; ratio to target {r['speedup'] / TARGET:.3f})",
    ]
    if dense_workdir:
        d = whole_run(dense_workdir)
        lines.append(f"dense {dense_workdir}: {_fmt_eval(d['final_eval'])}  train wall-clock {d['train_seconds']:.0f} s")
        if r["final_eval"] and d["final_eval"]:
            lines.append(f"  val loss difference (run − dense): {r['final_eval']['loss'] - d['final_eval']['loss']:+.4f}")
    return "\n".join(line for line in lines if line)


if __name__ == "__main__":
    if not 1 <= len(sys.argv) - 1 <= 2:
        sys.exit(__doc__)
    print(report(*sys.argv[1:]))

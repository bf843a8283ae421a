"""Shared by the four reproduction scripts (bench/reproduce/<paper>.py): the command line
(`--scale cpu|paper`), running the library's own `sparsity-jax` commands (a run whose
final checkpoint exists is not trained again; a command whose output file exists is not
run again), seeds, mean ± std, the verdict rule, and the writers of
bench/results/reproduce_<paper>_<scale>/ (findings table .md/.json, figures, stdout .txt).

Verdict rule (`verdict`), computed from per-seed booleans, never hand-written:
  * the finding holds in every seed                                  → "reproduces"
  * the regime it needs is not reached here (`regime` False)         → "does not at this scale: <why>"
  * the opposite holds in every seed (`opposite`, regime reached)    → "contradicts"
  * otherwise (seeds disagree, or neither direction in every seed)   → "inconclusive (k of n seeds)"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "reproduce"          # git-ignored (runs/)
RESULTS = ROOT / "bench" / "results"
CLI = [sys.executable, "-m", "sparsity_jax.cli"]
REPRODUCES, CONTRADICTS = "reproduces", "contradicts"


# ---------------------------------------------------------------- statistics and verdicts
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std of no values")
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def pm(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    """'mean ± std' of `values` × scale, e.g. pm([1, 2, 3]) == '2.000 ± 1.000'."""
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def verdict(holds: Sequence[bool], opposite: Sequence[bool] | None = None, regime: bool = True,
            why: str = "") -> str:
    """The verdict of one finding from its per-seed outcomes (module docstring)."""
    holds = [bool(h) for h in holds]
    if not holds:
        raise ValueError("verdict of no seeds")
    if all(holds):
        return REPRODUCES
    if not regime:
        return f"does not at this scale: {why}" if why else "does not at this scale"
    if opposite is not None and all(bool(o) for o in opposite):
        return CONTRADICTS
    return f"inconclusive ({sum(holds)} of {len(holds)} seeds)"


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx


@dataclasses.dataclass
class Finding:
    name: str            # the paper's claim, with its table / figure
    paper: str           # the paper's number(s)
    ours: str            # mean ± std over seeds, and the scale
    verdict: str
    command: str         # how to reproduce it
    explain: str = ""    # the measurement behind a miss (or the rule applied)
    seeds: int = 0


# ---------------------------------------------------------------- command line and output
def parse(doc: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (cpu scale)")
    p.add_argument("--steps", type=int, default=None, help="override training steps (smoke tests)")
    p.add_argument("--runs", default=None, help="run root (default runs/reproduce/<paper>)")
    p.add_argument("--out", default=None, help="results dir (default bench/results/reproduce_<paper>_<scale>)")
    p.add_argument("--topology", default="v5p-8", help="paper scale: TPU slice of the dry runs")
    if extra:
        extra(p)
    a = p.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",") if s != ""]
    return a


class Output:
    """The results directory and a tee of everything printed into stdout.txt."""

    def __init__(self, paper: str, args):
        self.paper, self.scale = paper, args.scale
        self.dir = Path(args.out) if args.out else RESULTS / f"reproduce_{paper}_{args.scale}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runs = Path(args.runs) if args.runs else RUNS / paper
        self.t0 = time.time()
        self._log = open(self.dir / ("stdout.txt" if args.scale == "cpu" else "dry_run.txt"), "w")

    def print(self, *msg) -> None:
        line = " ".join(str(m) for m in msg)
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def sh(self, args: Sequence[str], *, skip_if: Path | None = None, check: bool = True, quiet: bool = False) -> str:
        """Runs `sparsity-jax ARGS` (output echoed and logged) unless `skip_if` exists."""
        shown = "sparsity-jax " + " ".join(shlex.quote(str(a)) for a in args)
        if skip_if is not None and Path(skip_if).exists():
            self.print(f"$ {shown}\n  (skipped: {skip_if} exists)")
            return ""
        self.print(f"$ {shown}")
        t0 = time.time()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run(CLI + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True)
        out = p.stdout + p.stderr
        kept = [ln for ln in out.splitlines() if not quiet or "error" in ln.lower() or "fits" in ln.lower()]
        for ln in kept:
            if "WARNING" not in ln and "I0000" not in ln and "W0000" not in ln:
                self.print("  " + ln)
        self.print(f"  ({time.time() - t0:.0f} s, exit {p.returncode})")
        if check and p.returncode != 0:
            raise SystemExit(f"command failed (exit {p.returncode}): {shown}")
        return out

    def train(self, config: str, workdir: Path, overrides: dict) -> None:
        """`sparsity-jax train`, unless the run's summary shows it finished (resumes otherwise)."""
        summary = Path(workdir) / "summary.json"
        self.sh(["train", "--config", config, "--workdir", workdir, *flags(overrides)], skip_if=summary, quiet=True)

    def write(self, findings: list[Finding], tables: dict[str, str], data: dict, *, title: str | None = None,
              unit: str = "seeds") -> None:
        """findings.md (the verdict table, then the named tables) and results.json; `unit`:
        what the verdicts repeat over (seeds; the sequences of one pretrained model)."""
        lines = [title or f"# Does {self.paper} reproduce? ({self.scale} scale)", "",
                 f"| finding | paper | ours (mean ± std over {unit}) | verdict | {unit} | command |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {f.name} | {f.paper} | {f.ours} | {f.verdict} | {f.seeds} | `{f.command}` |" for f in findings]
        expl = [f"* **{f.name}**: {f.explain}" for f in findings if f.explain]
        if expl:
            lines += ["", "Why (the measurement behind each verdict):", "", *expl]
        for title, md in tables.items():
            lines += ["", f"## {title}", "", md]
        (self.dir / "findings.md").write_text("\n".join(lines) + "\n")
        (self.dir / "results.json").write_text(json.dumps(
            {"findings": [dataclasses.asdict(f) for f in findings], "data": data}, indent=1, default=float) + "\n")
        self.print("\n".join(lines))

    def done(self) -> None:
        self.print(f"wrote {self.dir}; wall time {time.time() - self.t0:.0f} s ({(time.time() - self.t0) / 60:.1f} min)")
        self._log.close()


def flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def metrics(workdir: Path) -> dict[str, list[dict]]:
    """{split: records sorted by step} of a run's metrics.jsonl (the last record of a step)."""
    by: dict[str, dict[int, dict]] = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by.setdefault(r.get("split", "train"), {})[r["step"]] = r
    return {k: [v[s] for s in sorted(v)] for k, v in by.items()}


# ---------------------------------------------------------------- figures
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def errorbars(ax, x, per_seed: Sequence[Sequence[float]], label: str, **kw) -> None:
    """Mean ± std over seeds (per_seed: one list of y per seed, aligned with x)."""
    cols = list(zip(*per_seed))
    ms = [mean_std(c) for c in cols]
    ax.errorbar(x, [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3, marker="o", label=label, **kw)


def integer_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def save(fig, out: Output, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out.dir / name, dpi=110)
    out.print(f"figure {out.dir / name}")


# ---------------------------------------------------------------- paper scale
# scanned blocks, full remat, FSDP over the whole slice: how bench/tpu_compile.py fits every
# paper config on v5p-8 (bench/results/tpu_compile_configs.txt)
POD = {"model.scan_layers": "True", "model.remat": "full", "mesh.data": "1", "mesh.fsdp": "-1", "mesh.tensor": "1"}


def paper_scale(out: Output, runs: list[tuple[str, str, dict]], after: list[str], topology: str,
                dry: Sequence[str] | None = None) -> None:
    """Dry-runs the paper configs (`runs`: (name, config, overrides); only the names in
    `dry`, default all: runs sharing a compiled shape need one) on `topology` with
    `train --dry-run --topology` (libtpu compiling on this CPU), then prints the
    launch/tpu_pod.sh lines that would train them and run `after` (sparsity-jax command
    lines; BUCKET_RUNS = the runs' gs:// root) on that slice."""
    bucket = f"gs://BUCKET/reproduce/{out.paper}"
    passed = {}
    for name, config, ov in runs:
        if dry is not None and name not in dry:
            continue
        out.print(f"== dry run {name}: {config} on {topology}")
        text = out.sh(["train", "--config", config, "--dry-run", "--topology", topology, *flags({**POD, **ov})],
                      check=False)
        fit = [ln for ln in text.splitlines() if ln.strip().startswith("fits")]
        passed[name] = bool(fit) and ": yes" in fit[-1]
        out.print(f"  -> dry run {'PASSES' if passed[name] else 'FAILS'}: {fit[-1].strip() if fit else 'no fit line'}")
    runtime = "v2-alpha-tpuv5" if topology.startswith("v5p") else "v2-alpha-tpuv5-lite"
    lines = [f"export TPU_NAME=sj-{out.paper.replace('_', '-')} ZONE=<zone> ACCELERATOR={topology} RUNTIME={runtime}",
             "launch/tpu_pod.sh create", "launch/tpu_pod.sh setup"]
    for name, config, ov in runs:
        lines.append("launch/tpu_pod.sh run train " + " ".join(
            shlex.quote(a) for a in ["--config", config, "--workdir", f"{bucket}/{name}", *flags({**POD, **ov})]))
    lines += ["launch/tpu_pod.sh run " + a.replace("BUCKET_RUNS", bucket) for a in after]
    lines.append("launch/tpu_pod.sh delete")
    out.print(f"\n== dry runs on {topology}: " + ", ".join(f"{k} {'passes' if v else 'FAILS'}" for k, v in passed.items()))
    out.print("== launch lines (from the repository root; every run resumes from its checkpoints if re-run):\n"
              + "\n".join(lines))

"""`make demo` (shortened by DEMO_FLAGS): trains the default model, which learns
`local_code`, evaluates every checkpoint with PPL-1%, and writes the run report, whose
every image exists and whose every section either has data or names the command that
produces it."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
# the default model on 16 × 64-token batches (its own 32 × 128 takes twice as long): every stage runs
SHORT = {"train.steps": 40, "train.checkpoint_every": 10, "train.keep_checkpoints": 4, "train.metrics_every": 10,
         "train.eval_every": 20, "train.log_every": 10, "train.eval_batches": 2, "data.max_files": 200,
         "train.global_batch_size": 16, "train.seq_len": 64}
SECTIONS = ("Training and validation loss", "Activation ratio per layer over training",
            "Hidden-unit use per token, sequence and batch (W&amp;A)", "CETT, PPL-p% sparsity and Pareto curves",
            "Activation ratio over checkpoints and its scaling fit")
NAMED = ("SSD: sparse phases, ARI, speed-up, sparse inference", "Predictivity (ReLU² Wins §4)",
         "Hardware affinity (ReLU² Wins §4)")


def test_make_demo_writes_the_run_report(tmp_path):
    wd = tmp_path / "demo"
    flags = " ".join(f"--config.{k}={v}" for k, v in SHORT.items())
    venv = os.path.dirname(os.path.dirname(sys.executable))  # the suite's own install; -o: never reinstall
    out = subprocess.run(["make", "-s", "-C", ROOT, "-o", f"{venv}/.installed", "demo", f"VENV={venv}",
                          f"WORKDIR={wd}", f"DEMO_FLAGS={flags}"], env=ENV, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{wd}/report/index.html" in out.stdout
    html = (wd / "report" / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert len(images) >= 7 and all((wd / "report" / name).stat().st_size > 1000 for name in images), images
    for title in SECTIONS + NAMED:
        assert f">{title}</h2>" in html, title
    body = {t: html.split(f">{t}</h2>")[1].split("<h2")[0] for t in SECTIONS + NAMED}
    for title in SECTIONS:  # the demo's own measurements
        assert "No data yet" not in body[title], (title, body[title][:300])
    for title in NAMED:  # the rest name the command that produces them
        assert "No data yet" in body[title] and "sparsity-jax " in body[title], (title, body[title][:300])
    # 40 steps of configs/default.py lower the validation loss by at least 30%
    evals = [json.loads(line) for line in open(wd / "metrics.jsonl") if '"eval"' in line]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    assert evals[-1]["loss"] <= 0.7 * evals[0]["loss"], (evals[0]["loss"], evals[-1]["loss"])
    summary = json.load(open(wd / "summary.json"))
    assert len(summary["activation_ratio"]) == 4 and all(0.0 < r < 1.0 for r in summary["activation_ratio"])
    assert os.listdir(wd / "tensorboard")
    ev = json.load(open(wd / "eval.json"))
    assert [r["step"] for r in ev["checkpoints"]] == [10, 20, 30, 40]
    assert all(0 < r["ppl_p"]["1"] <= r["activation_ratio_cett0"] + 1e-6 for r in ev["checkpoints"])
    assert "scaling.png" in images and (wd / "report" / "report.md").stat().st_size > 1000

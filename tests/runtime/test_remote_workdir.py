"""A workdir on a non-local filesystem (issue 19): `train` → `evaluate --ppl-p 1` →
`report` with `--workdir gs://bucket/run`, served by a local stand-in for GCS through
epath's fsspec backend and TensorStore (tests/runtime/fake_gcs.py, no network). Every
file lands in the bucket, none under the current directory."""
import json
import os

from sparsity_jax.cli import main
from tests.runtime import fake_gcs
from tests.train.helpers import TINY

RUN = "gs://bucket/run"


def test_train_evaluate_report_on_gs(tmp_path, monkeypatch):
    root, cwd = tmp_path / "gcs", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fake_gcs.install(monkeypatch, str(root))
    args = [f"--config.{k}={v}" for k, v in {**TINY, "train.steps": 4, "train.checkpoint_every": 2,
                                               "train.metrics_every": 2}.items()]
    assert main(["train", "--workdir", RUN] + args) == 0
    assert main(["evaluate", "--workdir", RUN, "--ppl-p", "1"]) == 0
    assert main(["report", "--workdir", RUN]) == 0
    run = root / "bucket" / "run"
    files = {os.path.relpath(os.path.join(d, f), run) for d, _, fs in os.walk(run) for f in fs}
    for name in ("config.json", "metrics.jsonl", "summary.json", "eval.json", "report/ppl.json",
                 "report/index.html", "report/report.md", "checkpoints/2/_CHECKPOINT_METADATA",
                 "checkpoints/4/_CHECKPOINT_METADATA"):
        assert name in files, (name, sorted(files))
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in files), sorted(files)
    assert sum(f.startswith("report/") and f.endswith(".png") for f in files) >= 3, sorted(files)
    assert not fake_gcs.local_leaks(cwd), fake_gcs.local_leaks(cwd)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["split"] == "eval"] == [0, 4]
    ev = json.loads((run / "eval.json").read_text())
    assert [r["step"] for r in ev["checkpoints"]] == [2, 4]
    assert 0 < ev["checkpoints"][-1]["ppl_p"]["1"] <= 1
    html = (run / "report" / "index.html").read_text()
    assert "Training and validation loss" in html and "<img src='training.png'" in html

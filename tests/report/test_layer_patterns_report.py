"""`sparsity-jax report`: the layer-pattern table and figures from a run's metrics.jsonl."""
import json

import numpy as np

from sparsity_jax.cli import main
from sparsity_jax.runtime.logs import MetricsWriter


def _run(workdir, losses, use_scale):
    w = MetricsWriter(str(workdir))
    for i, loss in enumerate(losses):
        step = 10 * (i + 1)
        w.write(step, {"loss": loss})
        w.write(step, {"activation_ratio": use_scale * np.array([0.2, 0.1]) / step,
                       "use_per_sequence": np.array([0.9, 0.8]), "use_per_batch": np.array([1.0, 0.95])},
                split="units")
    json.dump({"unit_mask": {"at_step": 20}}, open(workdir / "config.json", "w"))


def test_report_writes_first_and_last_layer_tables_and_loss_comparison(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, [3.0, 2.0, 1.5], 10.0)
    _run(b, [3.1, 2.2, 1.7], 20.0)
    assert main(["report", "--workdir", str(a), "--compare", str(b)]) == 0
    out = json.load(open(a / "report" / "layer_patterns.json"))
    assert (out["first_step"], out["last_step"]) == (10, 30)
    assert out["first"][0]["per-token %"] == 20.0 and out["last"][1]["per-token %"] == round(100 / 30, 3)
    assert out["last"][1]["per-batch %"] == 95.0 and "masked %" not in out["last"][0]
    md = (a / "report" / "layer_patterns.md").read_text()
    assert "## Step 30 (last)" in md and "| 0 | 6.667 | 90.0 | 100.0 |" in md
    for png in ("use_over_training.png", "loss_comparison.png"):
        assert (a / "report" / png).stat().st_size > 1000
    assert "final training loss: a 1.5000, b 1.7000" in capsys.readouterr().out

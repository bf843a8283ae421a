"""The activation comparison's report (search.checkpoint_sparsity / predict.analysis results →
report.cett_report) on made-up results."""
import json
import os

from sparsity_jax.cli import parser
from sparsity_jax.workflows.comparison import final_step
from sparsity_jax.report.cett_report import compare_table, write_compare_report
from sparsity_jax.runtime.workdir import Workdir


def _model(d_ff, cett, sparsity, d_model=128, num_layers=4):
    grid = [0.0, 0.1, 0.2]
    return {"d_ff": d_ff, "d_model": d_model, "num_layers": num_layers, "parameters": 1000, "dense_ppl": 5.0,
            "dense_loss": 1.61,
            "ppl_p": {"target_cett": cett, "ppl_ratio": 1.0099, "sparsity": sparsity, "activation_ratio": 1 - sparsity,
                      "evaluations": 5},
            "curve": {"target_cett": grid, "sparsity": [0.5, sparsity, 0.9], "ppl_ratio": [1.0, 1.009, 1.05]}}


def test_compare_report_files_and_table(tmp_path):
    models = {"relu": _model(512, 0.11, 0.80), "swiglu": _model(336, 0.09, 0.60)}
    models["relu"]["aspects"] = {"recall": 0.91, "prediction_sparsity": 0.62, "predictor_ppl_ratio": 1.05,
                                 "reuse_w1": 0.7, "reuse_w8": 0.85, "coactivation_gap": 0.3}
    result = {"config": "configs/relu2/tiny.py", "p": 1.0, "models": models}
    paths = write_compare_report(result, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["compare.json", "compare.png", "compare.md"]
    assert os.path.getsize(paths[1]) > 10_000
    data = json.load(open(paths[0]))
    assert data["models"]["relu"]["ppl_p"]["target_cett"] == 0.11 and data["table"] == compare_table(models, 1.0)
    rows = open(paths[2]).read().splitlines()
    assert any(r.startswith("| relu | 32 | 512 |") and "| 0.8000 |" in r and "| 0.5000 |" in r
               and r.endswith("| 0.9100 | 0.6200 | 1.0500 | 0.7000 | 0.8500 | 0.3000 |") for r in rows)
    assert any(r.startswith("| swiglu |") and r.endswith("| - | - | - | - | - | - |") for r in rows)
    assert final_step(Workdir(tmp_path / "missing")) is None
    args = parser().parse_args(["compare", "--workdir", str(tmp_path), "--activations", "relu"])
    assert args.variants == "relu" and args.config == "configs/relu2/tiny.py"


def test_width_depth_figure_when_d_over_l_differs(tmp_path):
    models = {"d64_l16": _model(160, 0.1, 0.85, 64, 16), "d256_l1": _model(640, 0.12, 0.9, 256, 1)}
    result = {"config": "configs/sparsing_law/width_depth.py", "p": 1.0, "models": models}
    paths = write_compare_report(result, str(tmp_path))
    assert os.path.basename(paths[-1]) == "width_depth.png" and os.path.getsize(paths[-1]) > 10_000
    assert "| d64_l16 | 4 | 160 |" in compare_table(models, 1.0)

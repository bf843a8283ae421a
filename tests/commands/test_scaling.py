"""`sparsity-jax scaling`: Table 2 and Fig. 4 from the shipped curves; fits of evaluated
runs read from their eval.json (synthetic here: points of a known ReLU-form curve)."""
import json

import numpy as np
import pytest

from sparsity_jax.cli import main
from sparsity_jax.scaling import TABLE2, law


def test_builtin_prints_table2_and_writes_the_figures(tmp_path, capsys):
    assert main(["scaling", "--builtin", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in TABLE2:
        assert any(line.startswith(name) for line in out.splitlines()), name
    for f in ("activation_vs_tokens.png", "derivative_vs_data_ratio.png", "table2.md"):
        assert (tmp_path / f).stat().st_size > 1000, f
    data = json.load(open(tmp_path / "scaling_builtin.json"))["curves"]
    assert len(data) == 11 and data["2.4b_relu"]["paper_params"] is None
    assert data["0.1b_relu"]["params"]["A0"] == pytest.approx(TABLE2["0.1b_relu"]["A0"], abs=0.0062)


def _evaluated_run(path, params, steps, warmup_steps=0):
    tokens = np.asarray(steps) * 4096.0 * 1e4  # tokens per step × a scale that spans D ≈ 0.4 … 12
    ratio = law("relu", tokens / 1e9, params)
    rows = [{"step": s, "train_tokens": float(t), "warmup": s <= warmup_steps, "loss": 2.0, "perplexity": 7.4,
             "activation_ratio": [0.5], "activation_ratio_cett0": 0.5, "ppl_p": {"1": float(r)}}
            for s, t, r in zip(steps, tokens, ratio)]
    path.mkdir()
    json.dump({"checkpoints": rows}, open(path / "eval.json", "w"))


def test_workdirs_fit_each_evaluated_run(tmp_path, capsys):
    truth = {"alpha": 0.6, "b": -2.0, "c": 0.5, "A0": 0.08}
    _evaluated_run(tmp_path / "a", truth, list(range(10, 310, 10)), warmup_steps=20)
    _evaluated_run(tmp_path / "b", {**truth, "A0": 0.12}, list(range(10, 310, 20)))
    out_dir = tmp_path / "fit"
    assert main(["scaling", "--workdirs", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--form", "relu",
                 "--drop-warmup", "--output", str(out_dir)]) == 0
    fits = json.load(open(out_dir / "scaling.json"))["runs"]
    assert fits["a"]["dropped"] == 2 and fits["b"]["dropped"] == 0
    for name, a0 in (("a", 0.08), ("b", 0.12)):  # noise-free points: the parameters come back
        for k, v in {**truth, "A0": a0}.items():
            assert fits[name]["params"][k] == pytest.approx(v, rel=1e-3), (name, k)
    assert (out_dir / "scaling.png").stat().st_size > 1000
    assert "2 warm-up points dropped" in capsys.readouterr().out


@pytest.mark.parametrize("argv,phrase", [
    (["scaling"], "either --builtin or --workdirs"),
    (["scaling", "--workdirs", "NOPE"], "does not exist"),
    (["scaling", "--workdirs", "EMPTY"], "eval.json does not exist"),
    (["scaling", "--workdirs", "EMPTY", "--curve", "ppl"], "eval.json does not exist"),
])
def test_bad_input_exits_2(argv, phrase, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("NOPE", str(tmp_path / "nope")).replace("EMPTY", str(tmp_path / "empty")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0], err
    assert list((tmp_path / "empty").iterdir()) == []

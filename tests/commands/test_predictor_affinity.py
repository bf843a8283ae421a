"""`sparsity-jax predictor`, `affinity` and `generate` on one tiny trained workdir: they
write their JSON + PNGs (and the predictors), generation runs with every FFN, and bad
input exits 2 before anything is written."""
import json
import os

import pytest

from sparsity_jax.cli import main
from sparsity_jax.predict import store
from tests.commands.test_bad_input import config_args, snapshot
from tests.train.helpers import TINY

SHORT = {**TINY, "train.steps": 2, "train.checkpoint_every": 1, "train.log_every": 1}
FAST = ["--eval-batches", "1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pa") / "run"
    assert main(["train", "--workdir", str(wd)] + config_args(**SHORT)) == 0
    return wd


def test_predictor_writes_report_and_predictors(workdir):
    argv = ["predictor", "--workdir", str(workdir), "--cett", "0.2", "--steps", "8", "--train-batches", "1",
            "--batch-tokens", "64", "--topk", "32,8"] + FAST
    assert main(argv) == 0
    report = workdir / "report"
    for f in ("predictor.json", "predictor_layers.png", "predictor_topk.png", "predictor_ppl.png"):
        assert (report / f).is_file(), f
    r = json.loads((report / "predictor.json").read_text())
    assert r["step"] == 2 and r["rank"] == 1 and len(r["thresholds"]) == 2 and r["summary"]
    assert r["target_cett"] == 0.2 and len(r["realised_cett"]) == 2 and "cett" not in r
    assert [(q["strategy"], q["k"]) for q in r["quality"]] == [("threshold", None), ("topk", 32), ("topk", 8)]
    assert r["quality"][1]["prediction_sparsity"] == pytest.approx(0.5)  # top-32 of F = 64
    assert len(r["ppl"]["predicted"]) == 3 and r["ppl"]["dense"]["perplexity"] > 1
    params, meta = store.load(r["saved"])
    assert r["saved"].endswith(os.path.join("predictors", "2_cett0.2"))
    assert params["w1"].shape == (2, 32, 1) and meta["target_cett"] == 0.2 and meta["thresholds"] == r["thresholds"]
    _generate(workdir, "predicted", "--cett", "0.2")  # the saved predictors drive decoding
    text = _generate(workdir, "predicted", "--cett", "0.2", "--neuron-order", "coactivation", "--block", "16")
    assert "co-activation neuron order in blocks of 16" in text and "block share (b = 16)" in text, text


def _generate(workdir, ffn, *extra, rows=2):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["generate", "--workdir", str(workdir), "--prompt", "def f(", "--prompt", "x = ",
                     "--max-new", "4", "--ffn", ffn, *extra] + FAST)
    text = out.getvalue()
    assert code == 0 and text.count("--- row ") == rows and "tokens/s" in text, text
    if ffn != "dense":  # per-layer shares and the overflow count
        assert "overflows:" in text and "results are exact either way" in text, text
    return text


def test_generate_dense_and_threshold(workdir):
    _generate(workdir, "dense")
    _generate(workdir, "threshold", "--cett", "0.2", "--batch", "3", rows=3)


def test_affinity_writes_report(workdir):
    assert main(["affinity", "--workdir", str(workdir), "--cett", "0.2", "--windows", "1,4"] + FAST) == 0
    report = workdir / "report"
    for f in ("affinity.json", "reuse_ratio.png", "coactivation_gap.png", "hot_neurons.png"):
        assert (report / f).is_file(), f
    r = json.loads((report / "affinity.json").read_text())
    assert set(r["reuse_ratio"]) == {"1", "4"} and len(r["coactivation_gap"]) == 2 and r["summary"]
    assert all(a <= b + 1e-9 for a, b in zip(r["reuse_ratio"]["1"], r["reuse_ratio"]["4"]))  # wider window reuses more
    assert r["coactivation_neurons"] == 64 and not r["coactivation_subsampled"]


BAD = [
    (["predictor", "--cett", "1.5"], "CETT between 0 and 1"),
    (["predictor", "--cett", "0.2", "--rank", "0"], "positive predictor rank"),
    (["predictor", "--cett", "0.2", "--rank", "33"], "at most min(d, F) = 32"),
    (["predictor", "--cett", "0.2", "--step", "7"], "no checkpoint at step 7"),
    (["predictor"], "Pass --cett"),
    (["affinity", "--cett", "-0.1"], "CETT between 0 and 1"),
    (["affinity", "--cett", "0.2", "--windows", "1,0"], "positive numbers of previous tokens"),
    (["affinity", "--cett", "0.2", "--step", "7"], "no checkpoint at step 7"),
    (["generate", "--prompt", "x", "--max-new", "0"], "--max-new ≥ 1"),
    (["generate", "--prompt", "x", "--step", "7"], "no checkpoint at step 7"),
    (["generate", "--prompt", "x", "--ffn", "predicted", "--cett", "0.37"], "no trained predictors"),
    (["generate", "--prompt", "x", "--ffn", "threshold", "--block", "24"], "must divide the FFN width"),
    (["generate", "--prompt", "x", "--layout", "coactivation"], "needs a sparse FFN"),
]


@pytest.mark.parametrize("argv,phrase", BAD, ids=[" ".join(a[0:1] + a[2:]) or a[0] for a, _ in BAD])
def test_bad_input_exits_2_before_writing(argv, phrase, workdir, capsys):
    before = snapshot(workdir)
    code = main(argv[:1] + ["--workdir", str(workdir)] + argv[1:])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert snapshot(workdir) == before

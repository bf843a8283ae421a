"""`sparsity-jax ssd`: the SSD report of a tiny SSD run vs a tiny dense run, and bad input."""
import json
import os

import pytest

from sparsity_jax.cli import main
from sparsity_jax.report.ssd_report import FILES, phases
from sparsity_jax.train import trainer
from tests.train.helpers import tiny_config

SSD = {"ssd.method": "ssd", "ssd.num_experts": 8, "ssd.top_k": 2, "ssd.monitor_every": 2, "ssd.ari_threshold": -1.0,
       "ssd.kmeans_iters": 5, "train.steps": 12, "train.eval_every": 4, "train.checkpoint_every": 100}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    ssd, dense = str(tmp_path_factory.mktemp("ssd")), str(tmp_path_factory.mktemp("dense"))
    trainer.train(tiny_config(**SSD), ssd)
    trainer.train(tiny_config(**dict(SSD, **{"ssd.method": "dense", "train.steps": 4})), dense)
    return ssd, dense


def test_report_files_and_numbers(workdirs, tmp_path, capsys):
    ssd, dense = workdirs
    out = tmp_path / "report"
    code = main(["ssd", "--workdir", ssd, "--compare", dense, "--k", "1,2,8", "--drop-share", "0.5",
                 "--eval-batches", "1", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted(FILES)
    r = json.load(open(out / "ssd.json"))
    s = r["ssd"]
    # τ = -1: switch at the 2nd monitor step (4), sparse for 1.25 × 4 = 5 steps
    assert s["phases"][:2] == [["dense", 0, 4], ["sparse", 4, 9]] and s["phases"][-1][::2] == ["dense", 12]
    # the first clustering (step 2) has nothing to compare with: the first ARI is at step 4
    assert s["flops"]["speedup"] > 1.0 and s["ari"][0]["step"] == 4 and s["eval"][-1]["step"] == 12
    assert s["wall_clock"]["seconds_per_step"]["sparse"] > 0 and s["wall_clock"]["run_speedup_vs_all_dense"] > 0
    assert r["dense"]["eval"][-1]["step"] == 4
    own, moefied = r["inference"]["SSD"], r["inference"]["dense, MoEfied"]
    assert own["structure"] == "own" and moefied["structure"] == "moefy"
    for res in (own, moefied):
        fixed = {row["k"]: row for row in res["rows"] if row["drop_share"] == 0}
        assert sorted(fixed) == [1, 2, 8]
        assert abs(fixed[8]["loss"] - res["dense"]["loss"]) <= 1e-5  # k = N is the dense model
    assert [(q["k"], q["experts_per_token"]) for q in own["rows"] if q["drop_share"] == 0.5] == [(1, 0.5), (2, 1.0), (8, 4.0)]
    assert not [q for q in moefied["rows"] if q["drop_share"]]


def test_phases_from_switch_records():
    recs = {2: {"ssd_sparse": 0.0}, 4: {"ssd_switch": 1.0}, 9: {"ssd_switch": -1.0}, 12: {"ssd_switch": 1.0}}
    assert phases(recs, 14) == [["dense", 0, 4], ["sparse", 4, 9], ["dense", 9, 12], ["sparse", 12, 14]]
    assert phases({}, 5) == [["dense", 0, 5]]


@pytest.mark.parametrize("extra,needle", [
    (["--k", "0,2"], "k must be in 1..8"),
    (["--k", "9"], "k must be in 1..8"),
    (["--k", "two"], "comma-separated integers"),
    (["--drop-share", "1.5"], "drop shares must be in [0, 1)"),
    (["--experts", "3"], "must divide d_ff=64"),
    (["--compare", "/nonexistent/dense"], "does not exist"),
])
def test_bad_input_exits_2(workdirs, extra, needle, tmp_path, capsys):
    code = main(["ssd", "--workdir", workdirs[0], "--eval-batches", "1", "--output", str(tmp_path / "r")] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "r").exists()


def test_missing_or_empty_workdir_exits_2(tmp_path, capsys):
    assert main(["ssd", "--workdir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["ssd", "--workdir", str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err

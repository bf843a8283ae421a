"""`sparsity-jax ssd`: the SSD report of a tiny SSD run vs a tiny dense run, and bad input."""
import json
import os
import shutil

import pytest

from sparsity_jax.cli import main
from bench.ssd_run import whole_run
from sparsity_jax.errors import UserError
from sparsity_jax.methods import make_method, step_flops
from sparsity_jax.report.ssd_report import FILES, phases, ssd_report
from sparsity_jax.train import trainer
from tests.train.helpers import tiny_config

SSD = {"method.name": "ssd", "method.num_experts": 8, "method.top_k": 2, "method.monitor_every": 2,
       "method.ari_threshold": -1.0, "method.kmeans_iters": 5, "train.steps": 12, "train.eval_every": 4,
       "train.checkpoint_every": 100}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    ssd, dense = str(tmp_path_factory.mktemp("ssd")), str(tmp_path_factory.mktemp("dense"))
    trainer.train(tiny_config(**SSD), ssd, make_method)
    trainer.train(tiny_config(**dict(SSD, **{"method.name": "dense", "train.steps": 4})), dense, make_method)
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
    assert s["ari"][0]["step"] == 4 and s["eval"][-1]["step"] == 12
    run = trainer.build_run(tiny_config(**SSD), ssd, make_method)
    dense_flops, sparse_flops = step_flops(run, 0), step_flops(run, 2)
    assert s["flops"]["speedup"] == pytest.approx(12 * dense_flops / (7 * dense_flops + 5 * sparse_flops), rel=1e-9)
    # steps per phase as logged by the FLOPs accounting: the phases above, 5 sparse + 7 dense
    assert s["wall_clock"]["steps"] == {"dense": 7.0, "sparse": 5.0} and s["sparse_share"] == 5 / 12
    assert r["dense"]["eval"][-1]["step"] == 4
    own, moefied = r["inference"]["SSD"], r["inference"]["dense, MoEfied"]
    assert own["structure"] == "own" and moefied["structure"] == "moefy"
    for res in (own, moefied):
        fixed = {row["k"]: row for row in res["rows"] if row["drop_share"] == 0}
        assert sorted(fixed) == [1, 2, 8]
        assert abs(fixed[8]["loss"] - res["dense"]["loss"]) <= 1e-5  # k = N is the dense model
    assert [(q["k"], q["experts_per_token"]) for q in own["rows"] if q["drop_share"] == 0.5] == [(1, 0.5), (2, 1.0), (8, 4.0)]
    assert not [q for q in moefied["rows"] if q["drop_share"]]


@pytest.mark.parametrize("ssd_cfg,method", [({"method": "smoe"}, "smoe"), ({"method": "dense"}, "dense"),
                                            ({"method": "pld"}, "pld"), ({"enabled": False}, "dense")])
def test_non_ssd_run_is_refused(workdirs, tmp_path, ssd_cfg, method):
    """A baseline's logs have no SSD switches: the report would say sparse share 0, so refuse."""
    run = str(tmp_path / "run")
    shutil.copytree(workdirs[0], run, ignore=shutil.ignore_patterns("checkpoints", "report"))
    cfg = json.load(open(os.path.join(run, "config.json")))
    cfg["ssd"] = {k: v for k, v in cfg.pop("method").items() if k != "name"} | ssd_cfg  # an old config
    if method == "pld":  # a valid pld config records nothing
        cfg["train"].update(record="none", metrics_every=0)
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    with pytest.raises(UserError, match=f"was trained with method.name={method} — use bench/ssd_run.py {run}"):
        ssd_report(run, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_old_config_enabled_means_ssd_and_dense_compare_is_fine(workdirs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(workdirs[0], run, ignore=shutil.ignore_patterns("checkpoints", "report"))
    cfg = json.load(open(os.path.join(run, "config.json")))
    cfg["ssd"] = {k: v for k, v in cfg.pop("method").items() if k != "name"} | {"enabled": True}
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    r = ssd_report(run, str(tmp_path / "out"), compare=workdirs[1])
    assert r["ssd"]["phases"][:2] == [["dense", 0, 4], ["sparse", 4, 9]] and r["dense"]["phases"] == [["dense", 0, 4]]


def test_ssd_run_keeps_last_record_per_step_after_resume(tmp_path):
    """A resumed run re-logs steps 3..4: time is Σ step_time·Δstep over unique sorted steps."""
    recs = [{"split": "train", "step": 2, "step_time": 1.0}, {"split": "train", "step": 4, "step_time": 2.0},
            {"split": "eval", "step": 4, "loss": 3.0, "perplexity": 20.0},
            {"split": "train", "step": 3, "step_time": 5.0}, {"split": "train", "step": 4, "step_time": 3.0},
            {"split": "train", "step": 6, "step_time": 0.5},
            {"split": "eval", "step": 4, "loss": 2.5, "perplexity": 12.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = whole_run(str(tmp_path))
    # steps 2, 3, 4, 6 with times 1, 5, 3, 0.5: 1·2 + 5·1 + 3·1 + 0.5·2 = 11 (file order gave 1·2 + 2·2 + 5·(−1) + …)
    assert r["train_seconds"] == 11.0 and r["final_eval"]["loss"] == 2.5


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

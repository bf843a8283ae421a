"""Every bad input ends with exit 2 and one sentence, before the workdir is created or
touched: the workdir's files are byte-identical afterwards (or it never existed)."""
import hashlib
import json
import os
import shutil

import pytest

from sparsity_jax.cli import main
from tests.train.helpers import TINY

SHORT = {**TINY, "train.steps": 2, "train.checkpoint_every": 1, "train.metrics_every": 1, "train.log_every": 1}


def snapshot(path) -> dict[str, str] | None:
    """{relative path: sha256 of the bytes} of every file (and '' for every directory)."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = ""
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def config_args(**kv) -> list[str]:
    return [f"--config.{k}={v}" for k, v in kv.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trained tiny workdirs (checkpoints at steps 1 and 2): dense and ssd."""
    base = tmp_path_factory.mktemp("trained")
    out = {}
    for name, extra in (("dense", {}), ("ssd", {"method.name": "ssd", "method.num_experts": 4, "method.top_k": 2})):
        assert main(["train", "--workdir", str(base / name)] + config_args(**SHORT, **extra)) == 0
        out[name] = str(base / name)
    return out


def _text_corpus(tmp_path, name: str, lines: list[str]) -> str:
    d = tmp_path / "corpus"
    d.mkdir(exist_ok=True)
    (d / name).write_text("\n".join(lines) + "\n")
    return str(d / name)


def _bad_config_file(tmp_path) -> list[str]:
    path = tmp_path / "typo.py"
    path.write_text("def get_config():\n    return {'train': {'steps': '300'}}\n")
    return ["--config", str(path)]


# (id, argv after `sparsity-jax`, phrase of the one-line message); WD is the workdir
FRESH = [
    ("schedule", ["train", "--config.optimizer.schedule=linear"], "optimizer.schedule='linear'"),
    ("activation", ["train", "--config.model.activation=tanh"], "model.activation='tanh'"),
    ("task", ["train", "--config.data.task=wiki"], "data.task='wiki' is unknown"),
    ("method", ["train", "--config.method.name=sparse"], "method.name='sparse'"),
    ("eval_every", ["train", "--config.train.eval_every=0"], "train.eval_every=0"),
    ("eval_batches", ["train", "--config.train.eval_batches=-1"], "train.eval_batches=-1"),
    ("checkpoint_every", ["train", "--config.train.checkpoint_every=-1"], "train.checkpoint_every=-1"),
    ("negative_lr", ["train", "--config.optimizer.lr=-0.001"], "optimizer.lr=-0.001"),
    ("heads", ["train", "--config.model.num_heads=3"], "must divide model.d_model"),
    ("experts", ["train", "--config.method.name=smoe", "--config.method.num_experts=3", "--config.method.top_k=2"],
     "must divide model.d_ff"),
    ("unknown_key", ["train", "--config.model.bogus=1"], "unknown config key"),
    ("override_type", ["train", "--config.model.d_model=abc"], "is not a valid int"),
    ("missing_file", ["train", "--config", "configs/nope.py"], "not found"),
    ("tfds", ["train", "--config.data.task=lm1b", "--config.data.tfds_data_dir=TMP/tfds"], "is not prepared"),
    ("compare_activation", ["compare", "--activations", "relu,bogus"], "unknown activation 'bogus'"),
    ("compare_predictor_steps", ["compare", "--predictor-steps", "-1"], "--predictor-steps ≥ 0"),
]


@pytest.mark.parametrize("case", FRESH, ids=[c[0] for c in FRESH])
def test_bad_input_before_a_fresh_workdir_exists(case, tmp_path, capsys):
    _, argv, phrase = case
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    wd = tmp_path / "wd"
    code = main(argv + ["--workdir", str(wd)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert not wd.exists()


def _file_cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    jsonl = _text_corpus(tmp_path, "docs.jsonl", [json.dumps({"text": f"doc {i}"}) for i in range(5)] + ["{oops"])
    txt = _text_corpus(tmp_path, "one.txt", ["just one file of text"] * 50)
    return {
        "config_file_type": (_bad_config_file(tmp_path), "train.steps='300' is a str"),
        "jsonl_line": (config_args(**{"data.task": "text_files", "data.text_glob": jsonl}), "line 6 is not JSON"),
        "empty_validation": (config_args(**{"data.task": "text_files", "data.text_glob": txt, "data.val_permille": 0,
                                            "data.num_shards": 1}), "validation split is empty"),
        "empty_train": (config_args(**{"data.task": "text_files", "data.text_glob": txt, "data.val_permille": 999,
                                       "data.num_shards": 1}), "train split"),
    }


@pytest.mark.parametrize("name", ["config_file_type", "jsonl_line", "empty_validation", "empty_train"])
def test_bad_data_and_files_before_a_fresh_workdir_exists(name, tmp_path, capsys):
    argv, phrase = _file_cases(tmp_path)[name]
    wd = tmp_path / "wd"
    small = {k: v for k, v in TINY.items() if not k.startswith("data.")}
    if name == "config_file_type":  # the file's own value must reach the settings
        small.pop("train.steps")
    code = main(["train", "--workdir", str(wd)] + argv + config_args(**small))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert not wd.exists()


def _corrupt_latest(wd):
    """The latest checkpoint's state files are garbage (a finished-looking step)."""
    for f in (wd / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.name != "commit_success.txt":
            f.write_bytes(b"garbage")


def _drop_meta_key(wd, key):
    path = wd / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))


def _predictors_saved(wd):
    """Predictors already saved for the latest step (2) at CETT 0.2 (never replaced)."""
    (wd / "predictors" / "2_cett0.2" / "params").mkdir(parents=True)
    (wd / "predictors" / "2_cett0.2" / "predictor.json").write_text("{}")


# (id, which trained run, how to damage the copy, argv with WD for the copy, phrase)
TRAINED = [
    ("predictor_saved", "dense", _predictors_saved, ["predictor", "--workdir", "WD", "--cett", "0.2"],
     "predictors are already saved in"),
    ("resume_other_model", "dense", None, ["train", "--workdir", "WD"] + config_args(**{**SHORT, "train.steps": 4,
                                                                                                  "model.d_ff": 128}),
     "another model (model.d_ff 64 → 128)"),
    ("ppl_p_negative", "dense", None, ["evaluate", "--workdir", "WD", "--ppl-p", "-1"], "positive percentage"),
    ("evaluate_eval_batches", "dense", None, ["evaluate", "--workdir", "WD", "--eval-batches", "-1"],
     "train.eval_batches=-1"),
    ("report_missing_compare", "dense", None, ["report", "--workdir", "WD", "--compare", "/nonexistent/run"],
     "/nonexistent/run does not exist"),
    ("report_same_name", "dense", None, ["report", "--workdir", "WD", "--compare", "OTHER/dense"],
     "have the same name 'dense'"),
    ("ssd_k0", "ssd", None, ["ssd", "--workdir", "WD", "--k", "0"], "k must be in 1..4"),
    ("ppl_last0", "dense", None, ["ppl", "--workdir", "WD", "--ppl-p", "1", "--last", "0"], "--last > 0"),
    ("ppl_topk", "dense", None, ["ppl", "--workdir", "WD", "--ppl-p", "1", "--topk", "65"], "between 1 and d_ff = 64"),
    ("ssd_step", "ssd", None, ["ssd", "--workdir", "WD", "--step", "7"], "no checkpoint at step 7"),
    ("ssd_dense_run", "dense", None, ["ssd", "--workdir", "WD"], "bench/ssd_run.py"),
    ("ssd_missing_compare", "ssd", None, ["ssd", "--workdir", "WD", "--compare", "/nonexistent/run"],
     "/nonexistent/run does not exist"),
    ("cett_step", "dense", None, ["cett", "--workdir", "WD", "--cett", "0.2", "--step", "7"],
     "no checkpoint at step 7"),
    ("corrupt_evaluate", "dense", _corrupt_latest, ["evaluate", "--workdir", "WD"], "checkpoint step 2"),
    ("corrupt_resume", "dense", _corrupt_latest, ["train", "--workdir", "WD"] + config_args(**{**SHORT, "train.steps": 4}),
     "move checkpoints/2 aside to resume from step 1"),
    ("meta_no_config", "dense", lambda wd: _drop_meta_key(wd, "config"), ["evaluate", "--workdir", "WD"],
     "holds no config"),
    ("meta_no_data_position", "dense", lambda wd: _drop_meta_key(wd, "data_position"),
     ["train", "--workdir", "WD"] + config_args(**{**SHORT, "train.steps": 4}), "no data position"),
]


@pytest.mark.parametrize("case", TRAINED, ids=[c[0] for c in TRAINED])
def test_bad_input_leaves_a_trained_workdir_untouched(case, runs, tmp_path, capsys):
    _, which, damage, argv, phrase = case
    wd = tmp_path / which  # a copy, so the damage stays in this test
    shutil.copytree(runs[which], wd)
    if damage is not None:
        damage(wd)
    other = tmp_path / "other" / "dense"
    other.mkdir(parents=True)
    before = snapshot(wd)
    code = main([a.replace("WD", str(wd)).replace("OTHER", str(tmp_path / "other")) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and phrase in err[0], err
    assert snapshot(wd) == before

"""Evaluation commands on 2 processes × 4 devices give the numbers of 1 process × 8
devices (issue 11): `evaluate` with PPL-1% (which runs the `ppl` command's sweep and
writes its ppl.json) and `cett`, on a checkpoint trained on a
data=2, fsdp=2, tensor=2 mesh and evaluated on data=4, tensor=2."""
import json
import os
import subprocess
import sys

import numpy as np

from sparsity_jax.cli import main
from tests.train.test_cli import ROOT, tiny_args

EVAL_MESH = ["--config.mesh.data=4", "--config.mesh.fsdp=1", "--config.mesh.tensor=2"]


def _launch(n, argv, tmp_path):
    env = dict(os.environ, SPARSITY_JAX=f"{sys.executable} -m sparsity_jax.cli", LOG_DIR=str(tmp_path))
    out = subprocess.run([os.path.join(ROOT, "launch", "local_multiprocess.sh"), str(n)] + argv, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _close(a, b, path=""):
    """Every number of two JSON trees equal to 1e-6 (relative), every other leaf equal;
    timings and paths are left out."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            if "second" not in k and k not in ("workdir", "output_dir", "saved"):
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=path)
    else:
        assert a == b, (path, a, b)


def test_evaluate_and_cett_on_two_processes_equal_one(tmp_path):
    """Both through launch/local_multiprocess.sh: 1 process × 8 devices and 2 × 4 over loopback."""
    run = tmp_path / "run"
    train = tiny_args(**{"train.steps": 20, "train.checkpoint_every": 10, "mesh.data": 2, "mesh.fsdp": 2,
                         "mesh.tensor": 2})
    assert main(["train", "--workdir", str(run)] + train) == 0
    outputs = {}
    for n in (1, 2):
        ev, ce = tmp_path / f"eval{n}.json", tmp_path / f"cett{n}.json"
        commands = [["evaluate", "--workdir", str(run), "--ppl-p", "1", "--output", str(ev)] + EVAL_MESH,
                    ["cett", "--workdir", str(run), "--cett", "0.2", "--output", str(ce)] + EVAL_MESH]
        for argv in commands:
            log = _launch(n, argv, tmp_path)
            assert argv[0] != "evaluate" or "validation: 1,024 real tokens" in log, log
        os.rename(run / "report", tmp_path / f"ppl{n}")  # the sweep's report (ppl.json and figures)
        outputs[n] = [json.load(open(f)) for f in (ev, ce, tmp_path / f"ppl{n}" / "ppl.json")]
    assert [r["step"] for r in outputs[1][0]["checkpoints"]] == [10, 20]
    assert 0 < outputs[1][0]["checkpoints"][-1]["ppl_p"]["1"] < 1
    assert outputs[1][2]["mode"] == outputs[2][2]["mode"] == "cache"
    for one, two in zip(outputs[1], outputs[2]):
        _close(one, two)
    assert sorted(os.listdir(tmp_path / "ppl2")) == sorted(os.listdir(tmp_path / "ppl1"))

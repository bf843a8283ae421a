"""End-to-end: default config learns; resume after SIGKILL; 2 processes = 1; exit codes; imports."""
import json
import os
import signal
import subprocess
import sys
import time


from sparsity_jax.cli import main
from tests.train.helpers import TINY, read_losses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "sparsity_jax.cli"]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def tiny_args(**extra):
    return [f"--config.{k}={v}" for k, v in {**TINY, **extra}.items()]


def test_default_config_learns_local_code(tmp_path):
    """100 steps of configs/default.py lower the validation loss by at least 30%."""
    main(["train", "--workdir", str(tmp_path), "--config.train.steps=100", "--config.train.eval_every=100"])
    evals = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"eval"' in l]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 100
    assert last["loss"] <= 0.7 * first["loss"], (first["loss"], last["loss"])
    summary = json.load(open(tmp_path / "summary.json"))
    assert len(summary["activation_ratio"]) == 4 and all(0.0 < r < 1.0 for r in summary["activation_ratio"])
    assert os.listdir(tmp_path / "tensorboard")


def test_resume_after_sigkill_reproduces_losses(tmp_path):
    steps = 120  # long enough that the kill lands well before the end on a fast machine
    args = tiny_args(**{"train.steps": steps, "train.checkpoint_every": 10})
    ref = tmp_path / "ref"
    subprocess.run(CLI + ["train", "--workdir", str(ref)] + args, env=ENV, check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(CLI + ["train", "--workdir", str(run)] + args, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    finished = lambda: sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())  # noqa: E731
    while time.time() < deadline and proc.poll() is None:
        # kill between checkpoints: after one finished and a later step was logged
        if metrics.exists() and (run / "checkpoints").exists() and finished():
            if max(read_losses(str(metrics)) or [0]) > finished()[-1]:
                break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at, ckpts = max(read_losses(str(metrics))), finished()
    assert ckpts and ckpts[-1] < killed_at < steps, f"not killed between checkpoints ({ckpts}, {killed_at})"
    subprocess.run(CLI + ["train", "--workdir", str(run)] + args, env=ENV, check=True, capture_output=True)
    want, got = read_losses(str(ref / "metrics.jsonl")), read_losses(str(run / "metrics.jsonl"))
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert abs(want[s] - got[s]) <= 1e-6, (s, want[s], got[s], killed_at, ckpts)
    # every checkpoint left behind restores (none is corrupt)
    assert main(["evaluate", "--workdir", str(run), "--eval-batches", "1", "--ppl-p", ""]) == 0
    rows = json.load(open(run / "eval.json"))["checkpoints"]
    assert [r["step"] for r in rows] == sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())


def test_two_processes_equal_one_process(tmp_path):
    """launch/local_multiprocess.sh: 2 processes × 4 devices == 1 process × 8 devices."""
    args = ["train"] + tiny_args(**{"train.steps": 4, "mesh.fsdp": 2, "mesh.tensor": 2})
    env = dict(os.environ, SPARSITY_JAX=f"{sys.executable} -m sparsity_jax.cli", LOG_DIR=str(tmp_path))
    script = os.path.join(ROOT, "launch", "local_multiprocess.sh")
    for n in (1, 2):
        subprocess.run([script, str(n)] + args + ["--workdir", str(tmp_path / f"p{n}")], env=env, check=True,
                       capture_output=True, timeout=600)
    one, two = read_losses(str(tmp_path / "p1" / "metrics.jsonl")), read_losses(str(tmp_path / "p2" / "metrics.jsonl"))
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for s in one:
        assert abs(one[s] - two[s]) <= 1e-5, (s, one[s], two[s])
    # the 2-process checkpoint restores in a 1-process run
    assert main(["evaluate", "--workdir", str(tmp_path / "p2"), "--eval-batches", "1", "--ppl-p", ""]) == 0
    assert json.load(open(tmp_path / "p2" / "eval.json"))["checkpoints"][-1]["step"] == 4


def test_evaluate_without_checkpoints(tmp_path, capsys):
    assert main(["evaluate", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoints" in err[0], err
    assert os.listdir(tmp_path) == []


def test_cli_subprocess_exit_code(tmp_path):
    out = subprocess.run(CLI + ["train", "--workdir", str(tmp_path), "--config.model.nope=1"], env=ENV,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown config key" in out.stderr


def test_nn_and_metrics_do_not_import_tensorflow():
    code = "import sys, sparsity_jax.nn, sparsity_jax.metrics; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=ENV).returncode == 0

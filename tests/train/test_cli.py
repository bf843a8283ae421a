"""End-to-end: resume after SIGKILL; exit codes (SIGTERM on 2 processes:
tests/train/test_preemption.py; the default config learning: `make demo`,
tests/commands/test_demo.py)."""
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


def test_resume_after_sigkill_reproduces_losses(tmp_path):
    steps = 60  # the kill lands after the first checkpoint (10), well before the end
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

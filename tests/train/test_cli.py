"""End-to-end: resume after SIGKILL; 2 processes = 1; exit codes; imports (the default
config learning is tested through `make demo`, tests/commands/test_demo.py)."""
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes(n, argv, workdir, log_dir):
    """`sparsity-jax ARGV` as n processes × 8/n CPU devices over loopback (as launch/local_multiprocess.sh)."""
    env = dict(ENV, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}")
    port = _free_port()
    flags = lambda i: [] if n == 1 else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),  # noqa: E731
                                         "--process-id", str(i)]
    return [subprocess.Popen(CLI + argv + ["--workdir", str(workdir)] + flags(i), env=env,
                             stdout=open(log_dir / f"proc{i}.log", "w"), stderr=subprocess.STDOUT) for i in range(n)]


def test_sigterm_on_one_host_saves_one_step_everywhere_and_two_hosts_equal_one(tmp_path):
    """2 processes × 4 devices give the 1 × 8 losses; a SIGTERM to process 1 alone makes
    both processes save the same step and exit 0 without a final evaluation; resuming
    (2 processes) reproduces the uninterrupted losses. (Restoring onto other meshes:
    tests/train/test_mesh.py.)"""
    steps = 100
    args = ["train"] + tiny_args(**{"train.steps": steps, "train.checkpoint_every": 1000, "mesh.fsdp": 2,
                                    "mesh.tensor": 2})
    assert main(args + ["--workdir", str(tmp_path / "ref")]) == 0  # 1 process × 8 devices: this one
    (tmp_path / "logs").mkdir()
    run = tmp_path / "run"
    procs = _processes(2, args, run, tmp_path / "logs")
    deadline = time.time() + 400
    logged = lambda: max(read_losses(str(run / "metrics.jsonl")) or [0]) if (run / "metrics.jsonl").exists() else 0  # noqa: E731
    while time.time() < deadline and logged() < 3:
        assert all(p.poll() is None for p in procs), "a process ended before the signal"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / "logs" / f"proc{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    saved = sorted(int(d) for d in os.listdir(run / "checkpoints") if d.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < steps, saved
    for log in logs:  # each process says it saved that step
        assert f"saved step {saved[0]} on every process" in log, log[-2000:]
    summary = json.load(open(run / "summary.json"))
    assert summary["preempted"] and summary["step"] == saved[0] and "loss" not in summary
    evals = [json.loads(line)["step"] for line in open(run / "metrics.jsonl") if '"eval"' in line]
    assert evals == [0], evals  # no final evaluation after the preemption
    resumed = _processes(2, args, run, tmp_path / "logs")
    assert [p.wait(timeout=600) for p in resumed] == [0, 0]
    want, got = read_losses(str(tmp_path / "ref" / "metrics.jsonl")), read_losses(str(run / "metrics.jsonl"))
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    for s in want:
        assert abs(want[s] - got[s]) <= 1e-5, (s, want[s], got[s])


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

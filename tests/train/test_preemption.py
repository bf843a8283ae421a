"""End-to-end preemption on 2 processes × 4 CPU devices over loopback (a separate file
from tests/train/test_cli.py so that pytest-xdist runs the two long tests side by side)."""
import json
import os
import signal
import subprocess
import time

from sparsity_jax.cli import main
from tests.train.helpers import read_losses
from tests.train.test_cli import CLI, ENV, tiny_args


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
    steps = 50
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

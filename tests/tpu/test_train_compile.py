"""The train step of every paper config, scanned with full remat, compiled by the TPU
compiler for a v5p-8 slice; the dry run's figures against independent counts: the
compiler's own FLOPs per chip against the CPU count of the model FLOPs, the scanned
model's extrapolated step time against the unrolled model's own estimate, a multi-host
slice, and a step the compiler refuses as one sentence with exit 2."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from sparsity_jax import cli, settings
from sparsity_jax.methods import make_method
from sparsity_jax.methods.base import Variant
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.train import dry_run as dr

SMALL = {"train.global_batch_size": "16", "train.seq_len": "64"}
SCANNED = {"model.scan_layers": "True", "model.remat": "full"}
# (config, its MoE step's K or 0): dense ReLU, ReLU² (ReLU² Wins), SSD's sparse (MoE) phase, PLD,
# Sparsing Law's ReLU, the layer-patterns model (dead-unit masking tracks hidden units)
PAPER = [("configs/default.py", 0), ("configs/relu2/tiny.py:relu2", 0), ("configs/ssd/tiny.py:ssd", 6),
         ("configs/ssd/tiny.py:pld", 0), ("configs/sparsing_law/0p1b.py:relu", 0),
         ("configs/layer_patterns/masking.py", 0)]
SHRINK = {"model.d_model": "128", "model.num_layers": "4", "model.num_heads": "4", "model.d_ff": "512",
          "model.vocab_size": "512", "model.dtype": "bfloat16", "mesh.data": "-1", "mesh.fsdp": "1",
          "mesh.tensor": "1", "train.grad_accum": "1"}


@pytest.mark.parametrize("config,top_k", PAPER)
def test_every_paper_train_step_compiles_scanned_with_remat_for_tpu(config, top_k, tpu):
    st = settings.load(config, {**SMALL, **SCANNED, **SHRINK})
    devices = tpu("v5p-8")
    run, compiled, seconds = dr.compile_step(st, make_method, devices, Variant(top_k=top_k) if top_k else None)
    assert not isinstance(compiled, str), compiled
    assert compiled.memory_analysis().argument_size_in_bytes > 0 and seconds > 0
    assert "TPU v5" in devices[0].device_kind and len(devices) == 4
    assert dr.cost_of(compiled)["flops"] > 0
    # the compiler estimates every step's time but the MoE step's (its gathers: a negative "unknown")
    assert (dr.optimal_seconds(compiled) is None) == bool(top_k)


def test_the_compilers_flops_and_the_extrapolated_step_time_match_independent_counts(tpu):
    devices = tpu("v5p-8")
    unrolled = settings.load("configs/default.py", SMALL)
    run, plain, _ = dr.compile_step(unrolled, make_method, devices)
    # an unrolled step without remat: the TPU compiler's FLOPs on 4 chips ≈ the CPU count of the model FLOPs
    model_flops = run.model_flops(Sparsify(), None)
    assert 0.97 < dr.cost_of(plain)["flops"] * 4 / model_flops < 1.05
    # the scanned model's estimate (1- and 2-layer compiles extrapolated) ≈ the unrolled model's own
    # (no loop over layers there); the scanned module's own estimate counts the loop's body once
    scanned = settings.load("configs/default.py", {**SMALL, "model.scan_layers": "True"})
    _, once, _ = dr.compile_step(scanned, make_method, devices)
    est = dr.compiler_costs(scanned, make_method, devices, once)
    assert abs(est["seconds"] / dr.optimal_seconds(plain) - 1) < 0.1
    assert abs(est["flops"] / dr.cost_of(plain)["flops"] - 1) < 0.05
    assert dr.optimal_seconds(once) < 0.7 * dr.optimal_seconds(plain)  # why it needs extrapolating


def test_dry_run_on_a_multi_host_slice_prints_the_compilers_figures_and_never_reaches_the_network(tmp_path):
    """The command as a user runs it, in its own process; under strace (where installed)
    every connect() it makes is recorded: none may be to an internet address."""
    workdir, trace = tmp_path / "run", tmp_path / "connect.log"
    cmd = [sys.executable, "-m", "sparsity_jax.cli", "train", "--config", "configs/default.py", "--workdir",
           str(workdir), "--dry-run", "--topology", "v5litepod-16"] + [f"--config.{k}={v}" for k, v in SMALL.items()]
    if shutil.which("strace"):
        cmd = ["strace", "-f", "--seccomp-bpf", "-e", "trace=connect", "-o", str(trace)] + cmd
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}  # the product sets them itself
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    result = json.loads(out[-1])
    assert (result["devices"], result["hosts"], result["device_kind"], result["fits"]) == (16, 4, "TPU v5 lite", True)
    assert result["flops_per_step"] > 0 and result["compiler_step_seconds"] > 0
    assert result["estimated_tokens_per_second"] == pytest.approx(16 * 64 / result["compiler_step_seconds"])
    assert result["capacity_bytes_per_device"] == 16 * 1024**3
    assert "16 × TPU v5 lite on 4 hosts" in out[0] and "(compiler estimate)" in "\n".join(out)
    assert not workdir.exists()
    if shutil.which("strace"):
        calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
        assert not [c for c in calls if "AF_INET" in c], calls


def test_a_step_the_compiler_refuses_is_one_sentence_and_exit_2(tmp_path, capsys):
    workdir = tmp_path / "run"
    big = {"train.global_batch_size": "512", "train.seq_len": "2048", "model.d_model": "1024", "model.d_ff": "8192"}
    args = ["train", "--config", "configs/default.py", "--workdir", str(workdir), "--dry-run",
            "--topology", "v5litepod-1"] + [f"--config.{k}={v}" for k, v in big.items()]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert "the compiler refused the step" in captured.out and "try --tune" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["fits"] is False
    assert not workdir.exists()

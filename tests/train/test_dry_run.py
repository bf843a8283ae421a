"""`sparsity-jax train --dry-run`: compiles the train step on abstract inputs, prints its
per-device memory, FLOPs and compile time with a JSON last line, writes nothing, and
exits 2 when the step does not fit the named device (issue 21, acceptance 3)."""
import dataclasses
import json

import pytest

from sparsity_jax import cli
from sparsity_jax.devices import hardware
from sparsity_jax.train import dry_run

ARGS = ["train", "--config", "configs/default.py", "--config.model.num_layers=2", "--config.train.global_batch_size=16",
        "--config.train.seq_len=64"]
D, L, F, V, TOKENS = 128, 2, 512, 259, 16 * 64  # the default config's model with the overrides above


def test_dry_run_prints_memory_flops_and_fit_and_writes_nothing(tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    assert cli.main(ARGS + ["--workdir", str(workdir), "--dry-run", "--dry-run-device", "v5e"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert not workdir.exists() and not any(tmp_path.iterdir())
    result = json.loads(out[-1])
    assert "fits v5e: yes" in out[-2] and result["fits"] is True
    # an independent count: parameters (non-embedding + tied embedding) and Adam's two moments, float32,
    # replicated on the data-parallel default mesh, are the step's arguments (plus the int32 batch)
    n_params = L * (4 * D * D + 2 * D * F + 2 * D) + V * D + D
    state_bytes = 3 * 4 * n_params
    assert state_bytes <= result["argument_bytes_per_device"] <= state_bytes * 1.02 + 5 * 4 * TOKENS
    assert result["peak_bytes_per_device"] >= result["argument_bytes_per_device"] + result["temp_bytes_per_device"] - 1
    # FLOPs: ~6 per parameter and token (forward + backward, Kaplan et al. 2020) plus attention's
    model_flops = 6 * TOKENS * (n_params - V * D) + 6 * TOKENS * V * D + 12 * L * TOKENS * 64 * D
    assert 0.8 < result["flops_per_step"] / model_flops < 1.5, result["flops_per_step"] / model_flops
    assert result["compile_seconds"] > 0

    # the same step against a device too small for it: one sentence, exit 2, still nothing written
    small = dataclasses.replace(hardware.chip_named("v5e"), hbm_bytes=result["peak_bytes_per_device"] - 1)
    monkeypatch.setattr(hardware, "CHIPS", (small,))
    assert cli.main(ARGS + ["--workdir", str(workdir), "--dry-run", "--dry-run-device", "v5e"]) == 2
    captured = capsys.readouterr()
    assert "fits v5e: NO" in captured.out and "raise train.grad_accum" in captured.err
    assert not workdir.exists()


@pytest.mark.parametrize("flags,message", [(["--topology", "v5e-7"], "not a TPU slice"),
                                           (["--dry-run-device", "tpu9"], "is not one of the known chips"),
                                           (["--config.model.remat=most"], "model.remat")])
def test_dry_run_bad_target_is_a_user_error(flags, message, tmp_path, capsys):
    assert cli.main(ARGS + ["--workdir", str(tmp_path / "run"), "--dry-run"] + flags) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_step_estimate_falls_back_to_the_roofline_of_the_compilers_counts():
    class V5e:
        device_kind = "TPU v5 lite"
    # v5e: 197 TFLOP/s bf16, 819 GB/s HBM; compute-bound, then memory-bound, by hand
    assert dry_run.estimates({"seconds": None, "flops": 1.97e12, "bytes": 8.19e8}, V5e()) == {
        "compiler_step_seconds": None, "roofline_step_seconds": pytest.approx(0.01)}
    assert dry_run.estimates({"seconds": 0.5, "flops": 1.97e12, "bytes": 8.19e10}, V5e()) == {
        "compiler_step_seconds": 0.5, "roofline_step_seconds": pytest.approx(0.1)}
    assert dry_run.estimates(None, V5e()) == {}  # a backend with no estimate (CPU)
    fields = dict(argument_bytes_per_device=0, output_bytes_per_device=0, alias_bytes_per_device=0,
                  temp_bytes_per_device=0, peak_bytes_per_device=0, flops_per_step=4 * 1.97e12, compile_seconds=1.0,
                  devices=4, hosts=1, device_kind="TPU v5 lite", capacity_bytes_per_device=None, capacity_of="v5e",
                  mesh="data=4", tokens_per_step=1000, per_device_batch=1, peak_flops_per_device=197e12)
    r = dry_run.DryRun(**fields, roofline_step_seconds=0.02)
    assert (r.estimated_step_seconds, r.estimate_source) == (0.02, dry_run.ROOFLINE)
    assert r.estimated_tokens_per_second == pytest.approx(50_000) and r.estimated_mfu == pytest.approx(0.5)
    r = dry_run.DryRun(**fields, compiler_step_seconds=0.04, roofline_step_seconds=0.02)
    assert (r.estimated_step_seconds, r.estimate_source) == (0.04, dry_run.ESTIMATE)

"""SSD in the trainer: switches happen, sparse phases run the MoE step, FLOPs drop, and
resuming in the middle of a sparse phase reproduces the uninterrupted losses."""
import json
import os
import signal

import pytest

from sparsity_jax.methods import make_method, step_flops
from sparsity_jax.runtime import names
from sparsity_jax.train import trainer
from tests.train.helpers import read_losses, tiny_config
from tests.train.test_trainer import patch_step

SSD = {"method.name": "ssd", "model.d_ff": 256, "method.num_experts": 8, "method.top_k": 2, "method.monitor_every": 4,
       "method.ari_threshold": -1.0, "method.kmeans_iters": 10, "train.steps": 40, "train.checkpoint_every": 100}


def ssd_records(workdir):
    recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r for r in recs if r["split"] == names.METHOD]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("ssd_ref"))
    trainer.train(tiny_config(**SSD), wd, make_method)
    return wd


def test_switches_and_flops(reference):
    recs = ssd_records(reference)
    switches = [(r["step"], r["ssd_switch"]) for r in recs if "ssd_switch" in r]
    # τ = -1: the second monitor step (8) switches; sparse lasts 1.25 × 8 = 10 steps; back at 18
    assert switches[:2] == [(8, 1.0), (18, -1.0)]
    assert all(step <= 36 for step, _ in switches)        # the final 10% (steps 36..40) stays dense
    last = recs[-1]
    run = trainer.build_run(tiny_config(**SSD), reference, make_method)
    dense, sparse = step_flops(run, 0), step_flops(run, 2)  # the compiled dense and MoE (K = 2) steps
    n = last["ssd_steps"]
    assert n["dense"] + n["sparse"] == 40 and n["sparse"] >= 10
    want = 40 * dense / (n["dense"] * dense + n["sparse"] * sparse)
    assert want > 1.05 and last["ssd_flops_speedup"] == pytest.approx(want, rel=1e-9)
    assert any(r["ssd_sparse"] == 1.0 for r in recs)
    assert all(last["ssd_seconds"][b] > 0.0 for b in ("dense", "sparse", "compile", "monitor"))


def test_resume_mid_sparse_phase_reproduces_losses(reference, tmp_path, monkeypatch):
    def term(state, m):
        os.kill(os.getpid(), signal.SIGTERM)
        return state, m

    patch_step(monkeypatch, 12, term)  # step 12 lies inside the first sparse phase (8..18)
    trainer.train(tiny_config(**SSD), str(tmp_path), make_method)
    monkeypatch.undo()
    trainer.train(tiny_config(**SSD), str(tmp_path), make_method)
    want, got = read_losses(os.path.join(reference, "metrics.jsonl")), read_losses(str(tmp_path / "metrics.jsonl"))
    assert sorted(got) == sorted(want) == list(range(1, 41))
    for s in want:
        assert abs(want[s] - got[s]) <= 1e-6, (s, want[s], got[s])

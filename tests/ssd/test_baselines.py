"""SSD's baselines under the same trainer (SSD §5, App. A): SMoE, MoE-Dropout, PLD."""
import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.methods import PLDSchedule, block_share, make_method, moe_dropout_top_k, step_flops
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.settings import from_saved
from sparsity_jax.ssd.convert import centres_from_params
from sparsity_jax.ssd.inference import moe_sparsify
from sparsity_jax.train import trainer
from sparsity_jax.runtime import names
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.train.setup import build
from sparsity_jax.runtime.trained import validation_batches
from tests.train.helpers import read_losses, tiny_config
from tests.train.test_trainer import patch_step

NO_RECORD = {"train.record": "none", "train.metrics_every": 0, "train.checkpoint_every": 100}
METHODS = {
    "smoe": {"method.name": "smoe", "method.num_experts": 4, "method.top_k": 2},
    "moe_dropout": {"method.name": "moe_dropout", "method.num_experts": 4, "method.top_k": 2},
    "pld": {"method.name": "pld", "method.pld_drop_rate": 0.5, "method.pld_gamma": 0.5, **NO_RECORD},
}


def records(workdir, split):
    return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if r["split"] == split]


def test_moe_dropout_k_grows_linearly_in_equal_stages():
    ks = [moe_dropout_top_k(s, 270, 6, 32) for s in range(270)]
    assert ks[0] == 6 and ks[9] == 6 and ks[10] == 7 and ks[259] == 31 and ks[260] == 32
    assert all(b - a in (0, 1) for a, b in zip(ks, ks[1:]))
    assert len(set(ks)) == 27 and sum(a != b for a, b in zip(ks, ks[1:])) == 32 - 6
    assert moe_dropout_top_k(270, 270, 6, 32) == 32


def test_pld_keep_schedule():
    """θ(t) = (1 − θ̄)e^{−γt} + θ̄; block i keeps with 1 − i/L·(1 − θ); mean drop → 0.25."""
    pld = PLDSchedule(num_layers=4, drop_rate=0.25, gamma=0.01)
    assert pld.theta_bar == pytest.approx(0.6)
    np.testing.assert_allclose(pld.keep_probs(0), 1.0)
    theta = 0.4 * np.exp(-0.01 * 100) + 0.6
    np.testing.assert_allclose(pld.keep_probs(100), 1 - np.arange(1, 5) / 4 * (1 - theta), rtol=1e-6)
    assert 1 - pld.keep_probs(10**6).mean() == pytest.approx(0.25)
    assert np.all(np.diff(pld.keep_probs(50)) < 0)  # deeper blocks drop more often
    np.testing.assert_allclose(np.asarray(pld.keep_probs(jnp.int32(100), jnp)), pld.keep_probs(100), rtol=1e-6)
    with pytest.raises(UserError, match="pld_drop_rate"):  # mean drop ≤ (L + 1)/(2L) = 0.625 at L = 4
        tiny_config(**{**METHODS["pld"], "model.num_layers": 4, "method.pld_drop_rate": 0.7})


def test_block_share_matches_xla():
    """A block's share of the train FLOPs from shapes ≈ XLA's count (L=2 minus L=1)."""
    def flops(cfg):
        graphdef, params = nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
        x = jax.ShapeDtypeStruct((4, 64), jnp.int32)
        loss = lambda p, t: nnx.merge(graphdef, p)(t).sum()  # noqa: E731
        cost = jax.jit(jax.grad(loss)).lower(params, x).compile().cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

    cfg = ModelConfig(vocab_size=259, d_model=64, num_layers=2, num_heads=4, d_ff=256)
    two, one = flops(cfg), flops(dataclasses.replace(cfg, num_layers=1))
    assert block_share(cfg, 64) == pytest.approx((two - one) / two, rel=0.15)


def test_method_validation():
    assert tiny_config(**{"method.name": "smoe"}).method.name == "smoe"
    legacy = tiny_config().to_dict()
    legacy["ssd"] = {k: v for k, v in legacy.pop("method").items() if k != "name"}
    legacy["ssd"]["enabled"] = True  # configs saved before ssd.method (and before method.name)
    assert from_saved(legacy).method.name == "ssd"
    with pytest.raises(UserError, match="method.name='sparse'"):
        tiny_config(**{"method.name": "sparse"})
    with pytest.raises(UserError, match="train.record=none"):
        tiny_config(**{"method.name": "pld"})
    with pytest.raises(UserError, match="must divide model.d_ff"):
        tiny_config(**{"method.name": "smoe", "method.num_experts": 3, "method.top_k": 2})
    with pytest.raises(UserError, match="grows K from method.top_k"):
        tiny_config(**{"method.name": "moe_dropout", "method.num_experts": 4, "method.top_k": 4})
    with pytest.raises(UserError, match="dead-unit masking trains the dense FFN"):
        tiny_config(**{"method.name": "smoe", "method.num_experts": 4, "method.top_k": 2, "unit_mask.at_step": 3})


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp(request.param))
    summary = trainer.train(tiny_config(**METHODS[request.param]), wd, make_method)
    return request.param, wd, summary


def test_baseline_trains_with_finite_loss_and_fewer_flops(trained):
    method, wd, summary = trained
    losses = read_losses(os.path.join(wd, "metrics.jsonl"))
    assert sorted(losses) == list(range(1, 13)) and all(np.isfinite(list(losses.values())))
    assert np.isfinite(summary["loss"]) and summary["method"]["method"] == method
    ssd = records(wd, names.METHOD)
    assert ssd[-1]["step"] == 12
    seconds = summary["method"]["cum"]["seconds"]
    assert seconds["checkpoint"] > 0.0  # saves are charged to their own bucket
    assert seconds["compile"] > 0.0  # and the first step of each compiled variant to compile
    cfg = tiny_config(**METHODS[method])
    run = trainer.build_run(cfg, wd, make_method)
    if method != "pld":  # speed-up = 12 dense steps / Σ FLOPs of the K of each step (XLA counts)
        ks = {"smoe": [2] * 12, "moe_dropout": [2] * 4 + [3] * 4 + [0] * 4}[method]
        want = 12 * step_flops(run, 0) / sum(step_flops(run, k) for k in ks)
        assert want > 1.02 and ssd[-1]["ssd_flops_speedup"] == pytest.approx(want, rel=1e-9)
    if method == "moe_dropout":  # K = 2, 3 in thirds, then the dense step (K = N = 4)
        assert [r["ssd_top_k"] for r in ssd if r["step"] in (4, 5, 8, 9, 12)] == [2, 3, 3, 4, 4]
        assert ssd[-1]["ssd_steps"] == {"sparse": 8, "dense": 4}
    if method == "pld":
        kept = [r["layers_kept"] for r in records(wd, "train")]
        assert kept[0] == 2 and min(kept) < 2  # all blocks at step 0, some dropped later
        # speedup = Σ dense / Σ dense·(1 − share·E[dropped_t]), E[dropped] from the keep schedule
        pld = PLDSchedule(2, 0.5, 0.5)
        dropped = [float(np.sum(1 - pld.keep_probs(t))) for t in range(12)]
        assert [r["pld_expected_kept"] for r in ssd] == pytest.approx([2 - d for d in dropped], rel=1e-6)
        share = block_share(run.model_cfg, cfg.train.seq_len)
        want = 12 / sum(1 - share * d for d in dropped)
        assert 1.05 < want and ssd[-1]["ssd_flops_speedup"] == pytest.approx(want, rel=1e-6)
        # the realised drops follow the schedule: mean kept within 0.5 of the expected mean
        assert abs(np.mean(kept) - np.mean([2 - d for d in dropped])) < 0.5


def test_pld_resume_reproduces_losses(trained, tmp_path, monkeypatch):
    method, wd, _ = trained
    if method != "pld":
        pytest.skip("one resume test: PLD's drops come from the state's rng and step")

    def term(state, m):
        os.kill(os.getpid(), signal.SIGTERM)
        return state, m

    patch_step(monkeypatch, 5, term)
    trainer.train(tiny_config(**METHODS[method]), str(tmp_path), make_method)
    monkeypatch.undo()
    trainer.train(tiny_config(**METHODS[method]), str(tmp_path), make_method)
    want, got = read_losses(os.path.join(wd, "metrics.jsonl")), read_losses(str(tmp_path / "metrics.jsonl"))
    assert sorted(got) == sorted(want)
    for s in want:
        assert abs(want[s] - got[s]) <= 1e-6, (s, want[s], got[s])


def test_smoe_is_evaluated_as_its_moe(trained):
    """The logged evals of an SMoE are the MoE with K of N experts (centres from the
    trained W_in, exact masked dispatch), not the dense network."""
    method, wd, summary = trained
    if method != "smoe":
        pytest.skip("smoe only")
    cfg = tiny_config(**METHODS[method])
    run = trainer.build_run(cfg, wd, make_method)
    val = validation_batches(run, wd)
    state, _ = Checkpointer(wd, read_only=True).restore(12, run.abstract_state)
    params = state["params"]
    moe = run.evaluate(params, val, moe_sparsify(centres_from_params(params, 4), 4, 2, dispatch="masked"))
    dense = run.evaluate(params, val)
    final = [r for r in records(wd, "eval") if r["step"] == 12][-1]
    assert final["loss"] == pytest.approx(float(moe["loss"]), rel=1e-5)
    assert summary["loss"] == pytest.approx(float(moe["loss"]), rel=1e-5)
    assert abs(float(moe["loss"]) - float(dense["loss"])) > 1e-3


def test_router_grad_setting():
    for method in ("ssd", "smoe", "moe_dropout"):
        assert tiny_config(**{"method.name": method}).method.router_grad is False
    assert tiny_config(**{"method.name": "smoe", "method.router_grad": "True"}).method.router_grad is True
    with pytest.raises(UserError, match="not a valid bool"):
        tiny_config(**{"method.name": "ssd", "method.router_grad": "maybe"})
    with pytest.raises(UserError, match="router_grad='maybe' is a str"):  # e.g. an untyped saved config
        from_saved({"ssd": {"router_grad": "maybe"}})
    assert from_saved({"ssd": {"router_grad": "TRUE"}}).method.router_grad is True


def test_smoe_with_all_experts_trains_like_dense(tmp_path):
    """K = N with constant gates (the smoe default) is the dense step, also in training."""
    short = {"train.steps": 6, "train.eval_every": 100, **NO_RECORD}
    trainer.train(tiny_config(**short), str(tmp_path / "dense"), make_method)
    trainer.train(tiny_config(**short, **{"method.name": "smoe", "method.num_experts": 4, "method.top_k": 4}),
                  str(tmp_path / "smoe"), make_method)
    dense, smoe = (read_losses(str(tmp_path / name / "metrics.jsonl")) for name in ("dense", "smoe"))
    assert sorted(smoe) == sorted(dense) == list(range(1, 7))
    assert max(abs(dense[s] - smoe[s]) for s in dense) < 1e-4, (dense, smoe)

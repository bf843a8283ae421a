"""Sharded training equals one-device training; logical-axis rules; optimizer schedules."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sparsity_jax.methods import make_method
from sparsity_jax.errors import UserError
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.devices import sharding as shd
from sparsity_jax.train.optimizer import make_schedule
from sparsity_jax.train.setup import build

from tests.train.helpers import synthetic_batch, tiny_config

VOCAB = 64


def losses_on(devices, mesh, steps=3, grad_accum=1):
    cfg = tiny_config(**{"mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
                         "train.grad_accum": grad_accum, "model.num_kv_heads": 2, "model.num_heads": 4})
    run = build(cfg, VOCAB, make_method, devices=devices)
    state = run.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        batch = run.device_batch(synthetic_batch(rng, 16, 32, VOCAB))
        state, m = run.train_step(state, batch, Sparsify())
        out.append((float(m["loss"]), np.asarray(m["activation_ratio"])))
    return out, state


def test_data_fsdp_tensor_mesh_equals_one_device():
    one, state1 = losses_on(jax.devices()[:1], (1, 1, 1))
    many, state8 = losses_on(jax.devices(), (2, 2, 2))
    for (l1, r1), (l8, r8) in zip(one, many):
        assert abs(l1 - l8) <= 1e-5, (l1, l8)
        np.testing.assert_allclose(r1, r8, atol=1e-5)
    # parameters really are sharded over fsdp and tensor
    w_in = state8["params"]["blocks"][0]["ffn"]["w_in"]
    assert w_in.sharding.spec == P("fsdp", "tensor")
    assert len({s.device for s in w_in.addressable_shards}) == 8
    np.testing.assert_allclose(np.asarray(w_in), np.asarray(state1["params"]["blocks"][0]["ffn"]["w_in"]), atol=1e-5)


def test_gradient_accumulation_equals_full_batch():
    full, _ = losses_on(jax.devices(), (-1, 1, 1), steps=2)
    accum, _ = losses_on(jax.devices(), (-1, 1, 1), steps=2, grad_accum=2)
    np.testing.assert_allclose([l for l, _ in full], [l for l, _ in accum], atol=1e-5)


def test_logical_rules_skip_axes_that_do_not_divide():
    mesh = shd.make_mesh(2, 2, 2)
    assert shd.logical_to_spec(("embed", "mlp"), (32, 64), mesh) == P("fsdp", "tensor")
    assert shd.logical_to_spec(("vocab", "embed"), (259, 32), mesh) == P(None, "fsdp")
    assert shd.logical_to_spec(("activation_batch", None), (16, 8), mesh) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="not in devices.sharding.LOGICAL_RULES"):
        shd.logical_to_spec(("batch", None), (16, 8), mesh)
    with pytest.raises(ValueError, match="devices"):
        shd.make_mesh(3, 1, 1)


def test_bad_batch_for_mesh_is_a_user_error():
    with pytest.raises(UserError, match="divisible by mesh"):
        build(tiny_config(**{"train.global_batch_size": 12, "data.num_shards": 4}), VOCAB, make_method)


def test_schedules():
    cfg = tiny_config(**{"optimizer.lr": 1.0, "optimizer.warmup_steps": 10, "optimizer.min_lr_ratio": 0.1,
                         "optimizer.decay_fraction": 0.2}).optimizer
    for name in ("constant", "cosine", "wsd", "noam"):
        f = make_schedule(dataclasses.replace(cfg, schedule=name), 110)
        assert float(f(0)) < 0.2 and abs(float(f(10)) - 1.0) < 0.11, name
    f = make_schedule(dataclasses.replace(cfg, schedule="wsd"), 110)
    assert float(f(50)) == pytest.approx(1.0)            # stable phase
    assert float(f(110)) == pytest.approx(0.1, rel=1e-4)  # decayed to min_lr_ratio
    assert float(f(100)) < 1.0
    assert float(make_schedule(dataclasses.replace(cfg, schedule="cosine"), 110)(110)) == pytest.approx(0.1, rel=1e-3)


def test_checkpoints_restore_onto_other_meshes_and_keep_n(tmp_path):
    """A checkpoint saved on data=8 resumes on data=4, tensor=2 with the uninterrupted
    losses (1e-5) and evaluates on one device with the 8-device numbers; keep-N keeps N."""
    from sparsity_jax.runtime.checkpoint import Checkpointer
    from sparsity_jax.train.trainer import train
    from sparsity_jax.runtime.trained import validation_batches
    from sparsity_jax.train.setup import build_run
    from tests.train.helpers import read_losses

    base = {"train.steps": 6, "train.checkpoint_every": 1, "train.keep_checkpoints": 2, "train.log_every": 1}
    train(tiny_config(**base), str(tmp_path / "ref"), make_method)  # data = 8
    assert Checkpointer(str(tmp_path / "ref"), read_only=True).all_steps() == [5, 6]  # keep-N
    train(tiny_config(**{**base, "train.steps": 3}), str(tmp_path / "moved"), make_method)
    moved = tiny_config(**{**base, "mesh.data": 4, "mesh.tensor": 2})
    train(moved, str(tmp_path / "moved"), make_method)  # resume at 3
    want, got = (read_losses(str(tmp_path / w / "metrics.jsonl")) for w in ("ref", "moved"))
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for s in want:
        assert abs(want[s] - got[s]) <= 1e-5, (s, want[s], got[s])
    evals = {}
    for name, devices, mesh in (("eight", jax.devices(), {}), ("one", jax.devices()[:1], {"mesh.data": 1})):
        cfg = tiny_config(**{**base, **mesh})
        run = (build(cfg, 259, make_method, devices=devices) if name == "one"
               else build_run(cfg, str(tmp_path / "ref"), make_method))
        ckpt = Checkpointer(str(tmp_path / "ref"), read_only=True)
        state, _ = ckpt.restore(6, run.abstract_state)
        ckpt.close()
        assert len(state["params"]["embed"].sharding.device_set) == len(devices)
        evals[name] = run.evaluate(state["params"], validation_batches(run, str(tmp_path / "ref")))
    assert abs(float(evals["one"]["loss"]) - float(evals["eight"]["loss"])) <= 1e-5
    np.testing.assert_allclose(evals["one"]["activation_ratio"], evals["eight"]["activation_ratio"], atol=1e-5)

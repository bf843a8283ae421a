"""Trainer stop conditions: NaN/inf loss stops with the step and keeps the last good
checkpoint; SIGTERM saves at the current step and exits cleanly."""
import os
import signal

import jax.numpy as jnp
import pytest

from sparsity_jax.errors import NonFiniteLoss
from sparsity_jax.train import trainer
from sparsity_jax.train.checkpoint import Checkpointer

from tests.train.helpers import tiny_config


def patch_step(monkeypatch, at_step, effect):
    """Wraps the built run's train step so that `effect(metrics)` applies from `at_step` on."""
    real_build = trainer.build_run

    def build_run(cfg, workdir):
        run = real_build(cfg, workdir)
        step_fn, calls = run.train_step, {"n": 0}

        class Wrapped:
            def __call__(self, *args):
                calls["n"] += 1
                state, m = step_fn(*args)
                return state, (effect(m) if calls["n"] >= at_step else m)

            def lower(self, *a):
                return step_fn.lower(*a)

        run.train_step = Wrapped()
        return run

    monkeypatch.setattr(trainer, "build_run", build_run)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    patch_step(monkeypatch, 7, lambda m: dict(m, loss=jnp.float32(jnp.nan)))
    cfg = tiny_config(**{"train.checkpoint_every": 5})
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        trainer.train(cfg, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path), read_only=True)
    assert ckpt.all_steps() == [5]


def test_sigterm_saves_and_exits(tmp_path, monkeypatch):
    def term(m):
        os.kill(os.getpid(), signal.SIGTERM)
        return m

    patch_step(monkeypatch, 6, term)
    summary = trainer.train(tiny_config(**{"train.checkpoint_every": 100}), str(tmp_path))
    assert summary["step"] == 6
    assert Checkpointer(str(tmp_path), read_only=True).all_steps() == [6]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_step_flops_count_every_micro_batch():
    """The micro-batch loop is a lax.scan, counted once by XLA's cost analysis:
    `_step_flops` multiplies by grad_accum, so G = 2 counts what G = 1 counts (same
    global batch), up to the optimizer update (counted twice, negligible)."""
    import numpy as np

    from sparsity_jax.train.setup import build
    from tests.train.helpers import synthetic_batch

    flops = {}
    for g in (1, 2):
        run = build(tiny_config(**{"train.grad_accum": g}), 259)
        batch = run.device_batch(synthetic_batch(np.random.default_rng(0), 16, 32, 259))
        flops[g] = trainer._step_flops(run, batch)
    assert flops[1] > 1e6
    assert flops[2] == pytest.approx(flops[1], rel=0.02)

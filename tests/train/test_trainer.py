"""Trainer stop conditions through the CLI: a NaN in the parameters stops with exit 3 and
keeps the last good checkpoint; SIGTERM saves at the current step, exits 0 and restores
the previous SIGTERM handler. Step FLOPs count every micro-batch. The logged step time
leaves evaluations out."""
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsity_jax.cli import main
from sparsity_jax.methods import make_method, step_flops
from sparsity_jax.train import trainer
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.logs import read_metrics
from sparsity_jax.train.setup import build
from tests.train.helpers import TINY, synthetic_batch, tiny_config


def patch_step(monkeypatch, at_step, effect):
    """Wraps the built run's train step: from call `at_step` on, the step's output
    (state, metrics) passes through `effect`."""
    real_build = trainer.build_run

    def build_run(cfg, workdir, make_method):
        run = real_build(cfg, workdir, make_method)
        step_fn, calls = run.train_step, {"n": 0}

        class Wrapped:
            def __call__(self, *args):
                calls["n"] += 1
                out = step_fn(*args)
                return effect(*out) if calls["n"] >= at_step else out

            def lower(self, *a):
                return step_fn.lower(*a)

        run.train_step = Wrapped()
        return run

    monkeypatch.setattr(trainer, "build_run", build_run)


def cli_args(workdir, **extra):
    return ["train", "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in {**TINY, **extra}.items()]


def test_nan_in_parameters_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """After step 6 a real NaN is written into one FFN kernel: step 7's loss is NaN."""
    def poison(state, metrics):
        params = jax.tree.map(lambda x: x, state["params"])
        w = params["blocks"][0]["ffn"]["w_in"]
        params["blocks"][0]["ffn"]["w_in"] = w.at[0, 0].set(jnp.nan)
        return dict(state, params=params), metrics

    patch_step(monkeypatch, 6, poison)
    assert main(cli_args(tmp_path, **{"train.checkpoint_every": 5})) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at step 7" in err[0] and "last good checkpoint is kept" in err[0], err
    ckpt = Checkpointer(str(tmp_path), read_only=True)
    assert ckpt.all_steps() == [5]
    state, meta = ckpt.restore(5, trainer.build_run(tiny_config(), str(tmp_path), make_method).abstract_state)
    assert meta["data_position"] == 5 and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_sigterm_saves_exits_0_and_restores_the_handler(tmp_path, monkeypatch):
    def term(state, metrics):
        os.kill(os.getpid(), signal.SIGTERM)
        return state, metrics

    def previous(signum, frame):  # the handler a host program had installed
        raise AssertionError("the trainer's own handler should be active while training")

    patch_step(monkeypatch, 6, term)
    old = signal.signal(signal.SIGTERM, previous)
    try:
        assert main(cli_args(tmp_path, **{"train.checkpoint_every": 100})) == 0
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
    assert Checkpointer(str(tmp_path), read_only=True).all_steps() == [6]


def test_step_flops_count_every_micro_batch():
    """The micro-batch loop is a lax.scan, counted once by XLA's cost analysis:
    `step_flops` multiplies by grad_accum, so G = 2 counts what G = 1 counts (same
    global batch), up to the optimizer update (counted twice, negligible)."""
    flops = {}
    for g in (1, 2):
        run = build(tiny_config(**{"train.grad_accum": g}), 259, make_method)
        run.device_batch(synthetic_batch(np.random.default_rng(0), 16, 32, 259))
        flops[g] = step_flops(run)
    assert flops[1] > 1e6
    assert flops[2] == pytest.approx(flops[1], rel=0.02)


def test_logged_step_time_leaves_evaluations_out(tmp_path, monkeypatch):
    """Each evaluation sleeps 1 s, every 2 steps, with a log line every 2 steps: a step of
    this tiny model takes milliseconds, so a step time of 0.5 s or more includes the sleep."""
    real_build = trainer.build_run

    def build_run(*args):
        run = real_build(*args)
        evaluate = run.evaluate
        run.evaluate = lambda *a: (out := evaluate(*a), time.sleep(1.0))[0]
        return run

    monkeypatch.setattr(trainer, "build_run", build_run)
    assert main(cli_args(tmp_path, **{"train.steps": 6, "train.log_every": 2, "train.eval_every": 2})) == 0
    train = read_metrics(tmp_path)["train"]
    assert sorted(train) == [2, 4, 6]
    for step in (2, 4, 6):
        assert train[step]["step_time"] < 0.5, (step, train[step])
        assert train[step]["tokens_per_sec"] > train[step]["tokens"] / 0.5

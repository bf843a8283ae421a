"""A trained workdir opened for evaluation: its settings, its model on the mesh, its
validation batches and a read-only checkpoint reader, and nothing of training (no
optimizer, no train step; checkpoints restore only what evaluation needs).

`checkpoints` and `saved_config` read a workdir without touching it; `open_trained`
builds the rest. All of these only read, so bad input fails before anything is written.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sparsity_jax.errors import UserError
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.model_run import ModelRun, build_model
from sparsity_jax.runtime.workdir import PathLike, Workdir
from sparsity_jax.settings import Settings


def data_module():
    """`sparsity_jax.data`, imported where data is needed (it imports TensorFlow)."""
    from sparsity_jax import data  # local: TensorFlow's import (seconds) only where data is read

    return data


def vocab_size(settings: Settings, workdir: PathLike | Workdir) -> int:
    """The data vocabulary's size (a SentencePiece model is trained into the workdir when
    the settings ask for one that does not exist yet)."""
    return data_module().vocab_size(settings.data, cache_dir=str(workdir))


def validation_batches(run: ModelRun, workdir: PathLike | Workdir) -> list[dict[str, jax.Array]]:
    """The run's `train.eval_batches` validation batches (0: all of them) as global arrays.

    UserError when they hold no real token, or, when all of the text is validation
    (`DataSettings.all_validation`, `--text`), when it holds fewer tokens than one batch."""
    s = run.settings
    it = data_module().get_batches(
        s.data, split="validation", global_batch_size=s.train.global_batch_size, seq_len=s.train.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(), cache_dir=str(workdir),
        max_batches=s.train.eval_batches or None)
    local = list(it)
    real = float(sum(np.sum(b["loss_weights"]) for b in local))
    if jax.process_count() > 1:
        real = float(np.sum(multihost_utils.process_allgather(np.float32(real))))
    batch, seq_len = s.train.global_batch_size, s.train.seq_len
    if s.data.all_validation and real < batch * seq_len:
        text = s.data.text_glob or f"the {s.data.task} corpus"
        raise UserError(f"{text} has {int(real):,} tokens and one batch of {batch} × {seq_len} needs "
                        f"{batch * seq_len:,}; give a longer text or lower --config.train.global_batch_size or "
                        "--config.train.seq_len.")
    if not local or real == 0:
        raise UserError("the validation split is empty; use a larger corpus or raise data.val_permille.")
    return [run.device_batch(b) for b in local]


@jax.jit
def _count_real(batches):
    return sum(jnp.sum(b["loss_weights"] > 0) for b in batches)


def real_tokens(batches: list[dict[str, jax.Array]]) -> int:
    """Real (loss-weighted) tokens of global batches, on every process (one jitted
    reduction, compiled once per batch structure)."""
    return int(_count_real(batches))


def checkpoints(workdir: PathLike | Workdir) -> tuple[Checkpointer, list[int]]:
    """A read-only checkpointer of a trained workdir and its checkpoint steps."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    if not wd.exists():
        raise UserError(f"workdir {wd} does not exist; pass the workdir of a trained run.")
    ckpt = Checkpointer(wd, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        ckpt.close()
        raise UserError(f"no checkpoints in {wd}: train first or pass the workdir of a trained run.")
    return ckpt, steps


def saved_config(ckpt: Checkpointer, step: int) -> dict:
    """The config saved with checkpoint `step` (a plain dict)."""
    meta = ckpt.restore_meta(step)
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"checkpoint step {step} in {ckpt.directory} holds no config in its metadata; "
                        "pass the run's config with --config FILE.")
    return meta["config"]


@dataclasses.dataclass
class Trained:
    """A trained workdir opened for evaluation: its model run, validation batches and checkpoints."""

    workdir: Workdir
    settings: Settings
    run: ModelRun
    val: list[dict[str, jax.Array]]
    ckpt: Checkpointer
    steps: list[int]

    @property
    def path(self) -> str:
        return str(self.workdir)

    def step(self, step: int | None) -> int:
        """`step`, or the latest checkpoint when None; UserError when there is no such checkpoint."""
        step = self.steps[-1] if step is None else int(step)
        if step not in self.steps:
            raise UserError(f"no checkpoint at step {step} in {self.path}; available steps: {self.steps}.")
        return step

    def restore(self, step: int) -> tuple[dict, dict]:
        """(state, metadata) of checkpoint `step` on this run's mesh: the parameters and the
        training method's entries (`ModelRun.eval_items`), no optimizer state."""
        return self.ckpt.restore_items(step, self.run.eval_items(self.ckpt.saved_tree(step)))

    def close(self) -> None:
        self.ckpt.close()


def open_trained(path: PathLike | Workdir, settings: Settings, ckpt: Checkpointer | None = None,
                 steps: list[int] | None = None) -> Trained:
    """A trained workdir with `settings` (e.g. its `saved_config`, or another mesh)."""
    wd = path if isinstance(path, Workdir) else Workdir(path)
    if ckpt is None:
        ckpt, steps = checkpoints(wd)
    try:
        run = build_model(settings, vocab_size(settings, wd))
        return Trained(wd, settings, run, validation_batches(run, wd), ckpt, steps)
    except BaseException:
        ckpt.close()
        raise

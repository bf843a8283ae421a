"""A run's directory: its data, its checkpoints and what was trained in it.

`build_run` and `validation_batches` give a run its model and data; `checkpoints` and
`saved_config` read a trained workdir without touching it; `open_workdir` builds a
trained run for evaluation; `resume_point` checks a checkpoint before training resumes
from it. All of these only read, so bad input fails before anything is written.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.settings import Settings, from_saved
from sparsity_jax.train.checkpoint import Checkpointer, checkpoint_dir
from sparsity_jax.train.setup import Run, build

# model fields that may change on resume: the compute dtype and the init (used at step 0 only)
_RESUMABLE = ("dtype", "mlp_init", "init_std")


def _data():
    from sparsity_jax import data  # imports TensorFlow: only where data is needed

    return data


def build_run(settings: Settings, workdir: str) -> Run:
    """The run of `settings`, its vocabulary from the data (a SentencePiece model is trained
    into the workdir when the settings ask for one that does not exist yet)."""
    return build(settings, _data().vocab_size(settings.data, cache_dir=workdir))


def validation_batches(run: Run, workdir: str) -> list[dict[str, jax.Array]]:
    """The run's `train.eval_batches` validation batches as global arrays; UserError when
    they hold no real token."""
    s = run.settings
    it = _data().get_batches(
        s.data, split="validation", global_batch_size=s.train.global_batch_size, seq_len=s.train.seq_len,
        process_index=jax.process_index(), process_count=jax.process_count(), cache_dir=workdir,
        max_batches=s.train.eval_batches)
    local = list(it)
    real = float(sum(np.sum(b["loss_weights"]) for b in local))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        real = float(np.sum(multihost_utils.process_allgather(np.float32(real))))
    if not local or real == 0:
        raise UserError("the validation split is empty; use a larger corpus or raise data.val_permille.")
    return [run.device_batch(b) for b in local]


def real_tokens(batches: list[dict[str, jax.Array]]) -> int:
    """Real (loss-weighted) tokens of global batches, on every process."""
    return int(jax.jit(lambda bs: sum(jnp.sum(b["loss_weights"] > 0) for b in bs))(batches))


def checkpoints(workdir: str) -> tuple[Checkpointer, list[int]]:
    """A read-only checkpointer of a trained workdir and its checkpoint steps."""
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist; pass the workdir of a trained run.")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        ckpt.close()
        raise UserError(f"no checkpoints in {workdir}: train first or pass the workdir of a trained run.")
    return ckpt, steps


def saved_config(ckpt: Checkpointer, step: int) -> dict:
    """The config saved with checkpoint `step` (a plain dict)."""
    meta = ckpt.restore_meta(step)
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"checkpoint step {step} in {ckpt.directory} holds no config in its metadata; "
                        "pass the run's config with --config FILE.")
    return meta["config"]


@dataclasses.dataclass
class Workdir:
    """A trained workdir opened for evaluation: the run, its validation batches and checkpoints."""

    path: str
    settings: Settings
    run: Run
    val: list[dict[str, jax.Array]]
    ckpt: Checkpointer
    steps: list[int]

    def step(self, step: int | None) -> int:
        """`step`, or the latest checkpoint when None; UserError when there is no such checkpoint."""
        step = self.steps[-1] if step is None else int(step)
        if step not in self.steps:
            raise UserError(f"no checkpoint at step {step} in {self.path}; available steps: {self.steps}.")
        return step

    def restore(self, step: int) -> tuple[dict, dict]:
        """(train state, metadata) of checkpoint `step` on this run's mesh."""
        return self.ckpt.restore(step, self.run.abstract_state)

    def close(self) -> None:
        self.ckpt.close()


def open_workdir(path: str, settings: Settings, ckpt: Checkpointer | None = None,
                 steps: list[int] | None = None) -> Workdir:
    """A trained workdir with `settings` (e.g. its `saved_config`, or another mesh)."""
    if ckpt is None:
        ckpt, steps = checkpoints(path)
    try:
        run = build_run(settings, path)
        return Workdir(path, settings, run, validation_batches(run, path), ckpt, steps)
    except BaseException:
        ckpt.close()
        raise


def resume_point(settings: Settings, workdir: str, run: Run) -> tuple[int, Any, dict] | None:
    """(step, state, metadata) to resume `settings` from in `workdir`, None for a fresh run.

    Reads the latest checkpoint and checks that it restores, that its metadata has the
    data position and config, and that it trained the same model; each problem is a
    UserError naming the step and the fix (nothing is written or deleted)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            return None
        step = steps[-1]
        previous = f"; move checkpoints/{step} aside to resume from step {steps[-2]}" if len(steps) > 1 else ""
        saved = from_saved(saved_config(ckpt, step))
        changed = [f"model.{f.name} {getattr(saved.model, f.name)!r} → {getattr(settings.model, f.name)!r}"
                   for f in dataclasses.fields(settings.model)
                   if f.name not in _RESUMABLE and getattr(saved.model, f.name) != getattr(settings.model, f.name)]
        if changed:
            raise UserError(f"{workdir} holds a checkpoint of another model ({', '.join(changed)}); resume with the "
                            "run's own config or pass a new --workdir.")
        state, meta = ckpt.restore(step, run.abstract_state, hint=previous)
        if "data_position" not in meta:
            raise UserError(f"checkpoint step {step} in {ckpt.directory} has no data position in its metadata, so "
                            f"the run cannot resume exactly{previous or '; start it in a new --workdir'}.")
        return int(meta["data_position"]), state, meta
    finally:
        ckpt.close()

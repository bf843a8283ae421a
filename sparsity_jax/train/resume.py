"""Where a training run starts: a fresh state, or the latest checkpoint of its workdir.

`resume_point` checks a checkpoint before training resumes from it: that it restores,
that its metadata has the data position and config, and that it trained the same model.
It only reads, so bad input fails before anything is written.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from sparsity_jax.errors import UserError
from sparsity_jax.runtime.checkpoint import Checkpointer
from sparsity_jax.runtime.trained import saved_config
from sparsity_jax.runtime.workdir import Workdir
from sparsity_jax.settings import Settings, from_saved
from sparsity_jax.train.setup import TrainRun

# model fields that may change on resume: the compute dtype, the init (used at step 0 only)
# and how the blocks run (the checkpoint restores into either layout, `runtime.block_stacking`)
_RESUMABLE = ("dtype", "mlp_init", "init_std", "remat", "scan_layers")


def resume_point(settings: Settings, workdir: Workdir, run: TrainRun) -> tuple[int, Any, dict] | None:
    """(step, state, metadata) to resume `settings` from in `workdir`, None for a fresh run;
    each problem is a UserError naming the step and the fix (nothing is written or deleted)."""
    if not workdir.checkpoints.is_dir():
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

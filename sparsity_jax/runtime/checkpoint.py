"""Orbax checkpoints: async, keep-N, atomic; restorable onto any mesh, whole or in part.

A checkpoint (directory `<workdir>/checkpoints/<step>/`) holds two items:
  state  the train-state pytree (params, optimizer state, step, RNG key data, and any
         extra state a training method adds, e.g. unit masks), saved with StandardSave;
  meta   JSON: data position (global batches consumed), the full config (the settings'
         `to_dict()`), and the training method's state (key "method").
Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves no partial checkpoint behind: `latest_step` only sees finished
ones. Restoring takes an abstract target whose leaves carry the *current* mesh's
shardings, which is how a checkpoint written on one mesh restores onto another;
`restore_items` reads only some subtrees (evaluation: the parameters, no optimizer state).
Both restore a checkpoint saved with per-layer blocks into a scanned model's stacked
ones and vice versa (`runtime.block_stacking`), so `model.scan_layers` may change between runs.
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from sparsity_jax.errors import UserError
from sparsity_jax.runtime.block_stacking import blocks_stacked, convert_blocks, placed
from sparsity_jax.runtime.workdir import PathLike, Workdir


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with user-facing errors."""

    def __init__(self, workdir: PathLike | Workdir, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        self.directory = wd.checkpoints
        if read_only and not self.directory.is_dir():
            raise UserError(f"no checkpoints in {wd}: train first or pass the workdir of a trained run")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only, read_only=read_only
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
        )

    def _restore(self, step: int, state_args, hint: str) -> tuple[Any, dict]:
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable/incompatible files
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint step {step} in {self.directory} cannot be restored ({reason})"
                            f"{hint or '; move that step directory aside or use the matching config'}.") from e
        return out["state"], dict(out["meta"])

    def _saved_layout(self, step: int, abstract: Any) -> bool | None:
        """The saved blocks' layout (stacked or not) when it differs from `abstract`'s, else None."""
        want = blocks_stacked(abstract)
        if want is None:
            return None
        try:
            have = blocks_stacked(self.saved_tree(step))
        except UserError:  # unreadable metadata: the restore itself names the problem
            return None
        return None if have is None or have == want else have

    def _restore_layout(self, step: int, abstract: Any, make_args, hint: str) -> tuple[Any, dict]:
        have = self._saved_layout(step, abstract)
        if have is None:
            return self._restore(step, make_args(abstract), hint)
        state, meta = self._restore(step, make_args(convert_blocks(abstract, have)), hint)
        return placed(convert_blocks(state, not have), abstract), meta

    def restore(self, step: int, abstract_state: Any, hint: str = "") -> tuple[Any, dict]:
        """Restores `step` onto the shardings of `abstract_state` (ShapeDtypeStructs), its
        blocks stacked or per layer as there; an unreadable or incompatible step is a
        UserError naming it (`hint`: the fix to add)."""
        return self._restore_layout(step, abstract_state, ocp.args.StandardRestore, hint)

    def restore_items(self, step: int, abstract_items: dict[str, Any], hint: str = "") -> tuple[dict, dict]:
        """Restores only the subtrees `abstract_items` of the saved state (e.g. {"params":
        ...}), each onto its shardings (blocks in their layout); nothing else is read."""
        def make_args(items):
            restore_args = ocp.checkpoint_utils.construct_restore_args(items)
            return ocp.args.PyTreeRestore(item=items, restore_args=restore_args, partial_restore=True)

        return self._restore_layout(step, abstract_items, make_args, hint)

    def saved_tree(self, step: int) -> dict:
        """The saved state's structure with each array's shape and dtype (Orbax metadata),
        read without restoring anything."""
        try:
            return dict(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state").tree)
        except Exception as e:
            raise UserError(f"checkpoint step {step} in {self.directory} has no readable state metadata; move that "
                            "step directory aside.") from e

    def restore_meta(self, step: int) -> dict:
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as e:
            raise UserError(f"checkpoint step {step} in {self.directory} has no readable metadata; move that step "
                            "directory aside.") from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

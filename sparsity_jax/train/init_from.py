"""Parameters of another run's checkpoint: `train --init-from RUN` starts from them (e.g.
an imported pretrained model, ReLU-fied by training it with --config.model.activation=
relu as ReluLLaMA / ProSparse did), and `export` reads them.

Only the parameters are read, onto the shardings the caller asks for, in the caller's
layout (per-layer or stacked blocks, `model.scan_layers`); their shapes must be the
caller's model's, else one sentence names the first that differs (before anything is
written).
"""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from sparsity_jax.errors import UserError
from sparsity_jax.nn.model import LM
from sparsity_jax.runtime.block_stacking import blocks_stacked, convert_blocks
from sparsity_jax.runtime.trained import checkpoints, saved_config
from sparsity_jax.runtime.workdir import Workdir, is_remote
from sparsity_jax.settings import Settings, apply_overrides, from_saved, load_file, upgrade


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def saved_run(workdir, step: int | None = None) -> tuple[Any, int, Settings, dict]:
    """(read-only checkpointer, step, saved settings, saved params tree (shapes)) of a run;
    the caller closes the checkpointer."""
    ckpt, steps = checkpoints(workdir)
    try:
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir}; available steps: {steps}.")
        st = from_saved(saved_config(ckpt, step))
        tree = ckpt.saved_tree(step)
        if "params" not in tree:
            raise UserError(f"checkpoint step {step} in {workdir} holds no parameters; pass a run's workdir.")
    except BaseException:
        ckpt.close()
        raise
    return ckpt, step, st, tree["params"]


def _check_shapes(workdir, abstract_params: dict, saved: dict, what: str) -> None:
    stacked = blocks_stacked(saved)  # compared as saved: scan_layers may differ (runtime.block_stacking)
    if stacked is not None:
        abstract_params = convert_blocks(abstract_params, stacked)
    want, have = _leaves(abstract_params), _leaves(saved)
    for name, spec in want.items():
        got = tuple(have[name].shape) if name in have else None
        if got != tuple(spec.shape):
            raise UserError(f"{what} {workdir}: parameter {name} is {got or 'missing'} there but "
                            f"{tuple(spec.shape)} in this model; use settings with the same model shape.")
    extra = sorted(set(have) - set(want))
    if extra:
        raise UserError(f"{what} {workdir}: its parameter {extra[0]} has no place in this model; use settings "
                        "with the same model shape.")


def check_init_shapes(settings: Settings, workdir) -> None:
    """`train --init-from` fails here, before any data or model is built, when the
    settings' model (with an explicit vocab_size) has other shapes than RUN's."""
    if not settings.model.vocab_size:
        return  # the data vocabulary decides; `restore_params` checks later, still before any write
    abstract = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: LM(settings.model, rngs=nnx.Rngs(0))), nnx.Param)[1])
    ckpt, _, _, saved = saved_run(workdir)
    ckpt.close()
    _check_shapes(workdir, abstract, saved, "--init-from")


def restore_params(workdir, abstract_params: dict, step: int | None = None, what: str = "--init-from") -> dict:
    """The parameters of `workdir`'s checkpoint `step` (None: the latest) onto the
    shardings of `abstract_params` (ShapeDtypeStructs; dtypes are cast to them)."""
    ckpt, step, _, saved = saved_run(workdir, step)
    try:
        _check_shapes(workdir, abstract_params, saved, what)
        state, _ = ckpt.restore_items(step, {"params": abstract_params})
    finally:
        ckpt.close()
    return jax.tree.map(lambda x, s: x.astype(s.dtype), state["params"], abstract_params)


def init_settings(config: str, overrides: dict[str, str], workdir) -> Settings:
    """The settings of `train --init-from RUN`: the config file's sections with RUN's model
    and, when RUN uses a pretrained tokenizer (data.vocab = hf), its vocabulary (the path
    made absolute); the command's `--config.*` overrides go on top of both."""
    ckpt, _, saved, _ = saved_run(workdir)
    ckpt.close()
    tree = upgrade(load_file(config))
    tree["model"] = saved.to_dict()["model"]
    if saved.data.vocab == "hf":
        path = saved.data.tokenizer
        if not (path.startswith("/") or is_remote(path)):  # relative: under RUN
            path = str(Workdir(workdir).root / path)
        tree["data"] = {**tree.get("data", {}), "vocab": "hf", "tokenizer": path}
    return Settings.from_dict(apply_overrides(tree, overrides))

"""Predictors saved next to their checkpoint: WORKDIR/predictors/<step>_cett<c>/ (or
<step>_zero for a_i != 0 labels) holding `params/` (Orbax, the stacked arrays) and
`predictor.json` (rank, CETT, thresholds, share, activation, training settings), on any
epath filesystem. Orbax writes to a temporary directory and renames it, so a killed save
leaves no partial parameters; predictors already saved at the same step and CETT are
never replaced (`check_free` refuses before any training).
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from sparsity_jax.errors import UserError
from sparsity_jax.predict.lowrank import Params
from sparsity_jax.runtime.workdir import PathLike, Workdir, as_path, read_json, write_json

META = "predictor.json"


def predictor_dir(workdir: PathLike | Workdir, step: int, target_cett: float | None):
    """WORKDIR/predictors/<step>_cett<c> (target_cett None: <step>_zero, labels a_i != 0)."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    return wd.predictor(f"{step}_zero" if target_cett is None else f"{step}_cett{target_cett:g}")


def check_free(path: PathLike) -> None:
    """UserError when `path` already holds saved predictors (they are never replaced)."""
    p = as_path(path)
    if p.exists():
        raise UserError(f"predictors are already saved in {p}; use them (generate --ffn predicted), pass another "
                        "--cett or --step, or move that directory aside.")


def save(path: PathLike, params: Params, meta: dict) -> None:
    """Writes the parameters (all processes take part) and the metadata (process 0);
    UserError when `path` already holds predictors."""
    path = as_path(path)
    check_free(path)
    meta = dict(meta, shapes={k: list(v.shape) for k, v in params.items()})
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        write_json(path / META, meta)


def exists(path: PathLike) -> bool:
    return (as_path(path) / META).is_file()


def load(path: PathLike, sharding=None) -> tuple[Params, dict]:
    """(params, metadata) of a saved predictor; UserError when `path` holds none."""
    path = as_path(path)
    if not exists(path):
        raise UserError(f"{path} holds no saved predictor ({META} missing); run sparsity-jax predictor first.")
    meta = read_json(path / META)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.ShapeDtypeStruct(tuple(s), "float32", sharding=sharding) for k, s in meta["shapes"].items()}
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params", target)
    return dict(params), meta

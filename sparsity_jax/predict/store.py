"""Predictors saved next to their checkpoint: WORKDIR/predictors/<step>_cett<c>/ (or
<step>_zero for a_i != 0 labels) holding `params/` (Orbax, the stacked arrays) and
`predictor.json` (rank, CETT, thresholds, share, activation, training settings).
Orbax writes to a temporary directory and renames it, so a killed save leaves no
partial parameters; saving again replaces them.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from sparsity_jax.errors import UserError
from sparsity_jax.predict.model import Params

META = "predictor.json"


def predictor_dir(workdir: str, step: int, cett: float | None) -> str:
    """WORKDIR/predictors/<step>_cett<c> (cett None: <step>_zero, labels a_i != 0)."""
    name = f"{step}_zero" if cett is None else f"{step}_cett{cett:g}"
    return os.path.join(os.path.abspath(workdir), "predictors", name)


def save(path: str, params: Params, meta: dict) -> None:
    """Writes the parameters (all processes take part) and the metadata (process 0)."""
    path = os.path.abspath(path)
    meta = dict(meta, shapes={k: list(v.shape) for k, v in params.items()})
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(path, META), "w") as f:
            json.dump(meta, f, indent=2)


def load(path: str, sharding=None) -> tuple[Params, dict]:
    """(params, metadata) of a saved predictor; UserError when `path` holds none."""
    path = os.path.abspath(path)
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise UserError(f"{path} holds no saved predictor ({META} missing); run sparsity-jax predictor first.")
    with open(meta_path) as f:
        meta = json.load(f)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.ShapeDtypeStruct(tuple(s), "float32", sharding=sharding) for k, s in meta["shapes"].items()}
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), target)
    return dict(params), meta

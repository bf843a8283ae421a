"""A trained or imported run's checkpoint as a Hugging Face directory: restore its
parameters on one device (`saved_model`), then `hf.run.export_run` writes them."""
from __future__ import annotations

import jax
from flax import nnx

from sparsity_jax.hf.load import abstract, one_device_mesh
from sparsity_jax.devices import sharding as shd
from sparsity_jax.runtime.workdir import Workdir
from sparsity_jax.train.init_from import restore_params, saved_run


def saved_model(workdir, step: int | None = None):
    """(model config, parameters on one device, Workdir) of a run's checkpoint (the latest
    when `step` is None)."""
    ckpt, step, st, saved = saved_run(workdir, step)
    ckpt.close()
    cfg = st.model_config(int(saved["embed"].shape[0]))
    mesh = one_device_mesh()
    _, state = abstract(cfg)
    sh = shd.param_shardings(state, mesh)
    target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), nnx.to_pure_dict(state), sh)
    return cfg, restore_params(workdir, target, step, what="export"), Workdir(workdir)

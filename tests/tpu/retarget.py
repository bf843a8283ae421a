"""Arguments of a function run on this machine's CPU mesh, as abstract values on a TPU
mesh of the same shape (each array with its own partition spec), to compile it for TPU."""
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from sparsity_jax.metrics.threshold_pass import ScorePlacement, Scores


def on_mesh(x, mesh):
    """`x` (a pytree of arrays, a search placement or `Scores`) as abstract values on `mesh`,
    each array with its own partition spec."""
    if isinstance(x, ScorePlacement):
        return x._replace(mesh=mesh) if x.mesh is not None else x
    if isinstance(x, Scores):
        return Scores(on_mesh(x.cached, mesh), on_mesh(x.args, mesh), on_mesh(x.placement, mesh), x.n_blocks,
                      x.stacked, x.compute)
    if isinstance(x, jax.Array):
        spec = x.sharding.spec if isinstance(x.sharding, NamedSharding) else P()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(on_mesh(v, mesh) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(on_mesh(v, mesh) for v in x)
    if isinstance(x, dict):
        return {k: on_mesh(v, mesh) for k, v in x.items()}
    return jax.tree.map(lambda v: on_mesh(v, mesh) if isinstance(v, jax.Array) else v, x)  # e.g. a `Sparsify`

"""One metric, four ways to call it on n fake devices (default 8): plainly, under jit on
arrays sharded over their batch axis, under shard_map and under pmap (axis name "data")."""
import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def four_call_styles(fn, args: tuple, batch_axes: tuple[int, ...], n: int = 8) -> dict:
    """{style: fn(*args)}; `fn(*args, axis_name=None)` reduces over "data" when mapped, and
    each argument is split into n along its batch axis."""
    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    specs = tuple(P(*([None] * ax), "data") for ax in batch_axes)
    sharded = jax.device_put(args, tuple(NamedSharding(mesh, s) for s in specs))
    local = functools.partial(fn, axis_name="data")
    split = tuple(a.reshape(a.shape[:ax] + (n, a.shape[ax] // n) + a.shape[ax + 1:]) for a, ax in zip(args, batch_axes))
    pmapped = jax.pmap(local, axis_name="data", in_axes=batch_axes, devices=jax.devices()[:n])(*split)
    return {
        "plain": fn(*args),
        "jit-sharded": jax.jit(fn)(*sharded),
        "shard_map": jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P()))(*sharded),
        "pmap": jax.tree.map(lambda x: x[0], pmapped),
    }

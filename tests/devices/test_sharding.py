"""The one rule table places activations and the KV cache as it places parameters: the
specs on a data=2, fsdp=2, tensor=2 mesh, hand-written; `constrain` inside jit keeps the
values and yields that sharding."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sparsity_jax.devices import sharding as shd


def test_activation_and_cache_axes_follow_the_rule_table():
    mesh = shd.make_mesh(2, 2, 2)
    spec = lambda axes, shape: shd.logical_to_spec(axes, shape, mesh)  # noqa: E731
    assert spec(("activation_batch", "activation_length", "activation_mlp"), (8, 16, 64)) == P(("data", "fsdp"), None,
                                                                                               "tensor")
    assert spec(("activation_batch", "activation_length", "activation_embed"), (8, 16, 32)) == P(("data", "fsdp"),
                                                                                                 None, None)
    assert spec(("cache_batch", "cache_sequence", "cache_heads", "cache_kv"), (4, 32, 2, 8)) == P(("data", "fsdp"),
                                                                                                  None, "tensor", None)
    # a dimension an axis does not divide stays replicated along it: 3 heads, batch 2 over data only
    assert spec(("cache_batch", "cache_sequence", "cache_heads", "cache_kv"), (2, 32, 3, 8)) == P("data", None, None,
                                                                                                  None)
    assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_constrain_inside_jit_keeps_values_and_places_them():
    mesh = shd.make_mesh(2, 2, 2)
    x = jnp.arange(8 * 4 * 16, dtype=jnp.float32).reshape(8, 4, 16)
    y = jax.jit(lambda v: shd.constrain(v * 2, ("activation_batch", "activation_length", "activation_mlp"), mesh))(x)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.asarray(x))
    assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
    assert shd.constrain(x, ("activation_batch",), None) is x  # no mesh: unchanged

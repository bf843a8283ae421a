"""KV-cache decoding against the full forward pass; the cache masks; sampling.

Models are built once per shape and cached: on CPU, compiling the initialisers of each
new shape costs more than the tests themselves."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.infer import Decoder, place
from sparsity_jax.infer.cache import cache_positions as positions, decode_mask, init_cache, left_pad
from sparsity_jax.infer.sampling import sample, top_p_mask
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.devices.sharding import make_mesh

PROMPTS = [[5, 1, 2, 3, 4, 9], [7, 8, 9]]  # unequal lengths: the second row is left-padded


@functools.cache
def tiny(activation: str, tie_embeddings: bool = True, scan: bool = False) -> LM:
    """2 layers, d = 32, F = 128, 4 query / 2 KV heads (one shape family for every test);
    `scan`: the same draws stacked and run under `lax.scan`."""
    cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=128,
                      activation=activation, tie_embeddings=tie_embeddings, scan_layers=scan)
    return LM(cfg, rngs=nnx.Rngs(0))


def full_logits(model, prompts, generated_BxN, **kw) -> list[np.ndarray]:
    """Per row, the full forward pass's logits at the positions the decoder drew each new
    token from: every prompt + its generated tokens in one jitted call, right-padded
    (padding comes after, so the causal model never sees it)."""
    seqs = [list(p) + list(g[:-1]) for p, g in zip(prompts, generated_BxN)]
    width = max(map(len, seqs))
    tokens = jnp.asarray([s + [0] * (width - len(s)) for s in seqs])
    graphdef, params = nnx.split(model)
    logits = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t, **kw))(params, tokens)
    return [np.asarray(logits[b, len(p) - 1:len(s)]) for b, (p, s) in enumerate(zip(prompts, seqs))]


@pytest.mark.parametrize("activation", ["relu", "relu2", "silu", "swiglu"])
def test_dense_decoding_equals_the_full_forward_pass(activation):
    model = tiny(activation, tie_embeddings=activation != "silu")  # silu: an untied head
    mesh = make_mesh(data=4, fsdp=1, tensor=2)  # heads, KV cache and the FFN tensor-sharded
    dec = Decoder(*place(model, mesh), mesh)
    gen = dec.generate(PROMPTS, 7, keep_logits=True)
    assert gen.tokens.shape == (2, 7) and gen.logits.shape == (2, 7, 61)
    for b, ref in enumerate(full_logits(model, PROMPTS, gen.tokens)):
        np.testing.assert_allclose(gen.logits[b], ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(gen.tokens[b], ref.argmax(-1))  # greedy
    assert float(gen.stats["tokens"]) == 2 * 6 and np.all(gen.stats["dense"] == 12)


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_greedy_decoding_scanned_and_unrolled_equals_the_full_forward_on_a_mesh(activation):
    """The stacked KV cache rides through the layer scan: a scan_layers model decodes under
    its scan and gives the unrolled model's tokens; both give the unrolled model's full
    forward logits (1e-5) on a data=2, fsdp=2, tensor=2 mesh."""
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    tokens = {}
    for scan in (False, True):
        gen = Decoder(*place(tiny(activation, scan=scan), mesh), mesh).generate(PROMPTS, 7, keep_logits=True)
        for b, ref in enumerate(full_logits(tiny(activation), PROMPTS, gen.tokens)):
            np.testing.assert_allclose(gen.logits[b], ref, atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(gen.tokens[b], ref.argmax(-1))
        tokens[scan] = gen.tokens
    np.testing.assert_array_equal(tokens[True], tokens[False])


@pytest.mark.parametrize("scan", [False, True])
def test_a_scanned_model_decodes_under_one_scan(scan):
    model = tiny("relu2", scan=scan)
    cache = init_cache(model.cfg, jnp.zeros((2,), jnp.int32), 8)
    out = model.forward(jnp.ones((2, 1), jnp.int32), cache=cache, start=jnp.int32(3))
    assert out.cache.k.shape == out.cache.v.shape == (2, 2, 8, 2, 8)  # (L, B, S, G, K)
    jaxpr = str(jax.make_jaxpr(lambda c: model.forward(jnp.ones((2, 1), jnp.int32), cache=c, start=jnp.int32(3)))(
        cache))
    assert jaxpr.count("scan[") == int(scan)


def test_cache_masks_and_positions():
    tokens, pad = left_pad([[1, 2, 3], [4]])
    np.testing.assert_array_equal(np.asarray(tokens), [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(np.asarray(positions(pad, jnp.int32(0), 3)), [[0, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(positions(pad, jnp.int32(3), 1)), [[3], [1]])
    m = np.asarray(decode_mask(pad, jnp.int32(0), 3, 5))[:, 0]
    np.testing.assert_array_equal(m[0], np.tril(np.ones((3, 5), bool)))
    # row 1: padding queries see only themselves; its real token sees slot 2 only
    np.testing.assert_array_equal(m[1], [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    step = np.asarray(decode_mask(pad, jnp.int32(3), 1, 5))[:, 0, 0]
    np.testing.assert_array_equal(step, [[1, 1, 1, 1, 0], [0, 0, 1, 1, 0]])


def test_sampling():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_array_equal(np.asarray(top_p_mask(logits, 0.7)), [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(np.asarray(top_p_mask(logits, 0.01)), [[1, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(sample(logits, jax.random.key(0), 0.0)), [0, 3])
    draw = jax.jit(jax.vmap(sample, in_axes=(None, 0, None, None)))
    nucleus = np.asarray(draw(logits, jax.random.split(jax.random.key(1), 4000), 1.0, 0.7))
    assert set(np.unique(nucleus[:, 0])) == {0, 1} and abs(np.mean(nucleus[:, 0] == 0) - 0.5 / 0.8) < 0.03
    hot = np.asarray(draw(logits, jax.random.split(jax.random.key(2), 4000), 1.0, 1.0))
    assert abs(np.mean(hot[:, 1] == 3) - 0.4) < 0.03

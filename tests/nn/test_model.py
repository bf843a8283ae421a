"""The LM: activation ratio at init, packed segments, GQA, tied/untied heads, config checks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.metrics.activation import activation_ratio
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.nn.model import LM, ModelConfig

TINY = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=64)


def tokens(b=4, t=24, seed=0, vocab=61):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


def test_fresh_relu_model_activates_half_the_units():
    """SSD §3: ReLU sparsity ≈ 0.5 at initialisation."""
    cfg = ModelConfig(vocab_size=259, d_model=128, num_layers=4, num_heads=4, d_ff=512, activation="relu")
    model = LM(cfg, rngs=nnx.Rngs(0))
    _, rec = model.apply(tokens(8, 64, vocab=259), record="mask")
    ratio = np.asarray(activation_ratio(rec["mask"]))
    assert rec["mask"].shape == (4, 8, 64, 512) and rec["mask"].dtype == jnp.bool_
    assert np.all(np.abs(ratio - 0.5) <= 0.05), ratio
    assert abs(ratio.mean() - 0.5) <= 0.05


def test_packed_segments_do_not_see_each_other():
    model = LM(TINY, rngs=nnx.Rngs(1))
    a, b = tokens(1, 10, seed=1), tokens(1, 14, seed=2)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.concatenate([jnp.ones((1, 10), jnp.int32), 2 * jnp.ones((1, 14), jnp.int32)], axis=1)
    pos = jnp.concatenate([jnp.arange(10), jnp.arange(14)])[None]
    out = model(packed, seg, pos)
    np.testing.assert_allclose(np.asarray(out[:, :10]), np.asarray(model(a)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[:, 10:]), np.asarray(model(b)), atol=1e-5)


def test_causality():
    model = LM(TINY, rngs=nnx.Rngs(1))
    x = tokens(2, 16)
    y = x.at[:, 10:].set(3)
    np.testing.assert_allclose(np.asarray(model(x)[:, :10]), np.asarray(model(y)[:, :10]), atol=1e-6)


@pytest.mark.parametrize("kw", [dict(num_kv_heads=2), dict(num_kv_heads=1), dict(tie_embeddings=False),
                                dict(activation="swiglu"), dict(dtype="bfloat16")])
def test_variants_run_and_record(kw):
    cfg = dataclasses.replace(TINY, **kw)
    model = LM(cfg, rngs=nnx.Rngs(0))
    logits, rec = model.apply(tokens(), record="both")
    assert logits.shape == (4, 24, 61) and logits.dtype == jnp.float32
    assert rec["scores"].shape == (2, 4, 24, 64) and rec["scores"].dtype == jnp.dtype(cfg.dtype)
    assert np.isfinite(np.asarray(logits)).all()
    if kw.get("tie_embeddings") is False:
        assert "head" in nnx.state(model, nnx.Param)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = LM(dataclasses.replace(TINY, num_kv_heads=2), rngs=nnx.Rngs(0))
    mha = LM(TINY, rngs=nnx.Rngs(0))
    for blk_g, blk_m in zip(gqa.blocks, mha.blocks):
        blk_m.attn.wk[...] = jnp.repeat(blk_g.attn.wk[...], 2, axis=1)
        blk_m.attn.wv[...] = jnp.repeat(blk_g.attn.wv[...], 2, axis=1)
        blk_m.attn.wq[...] = blk_g.attn.wq[...]
        blk_m.attn.wo[...] = blk_g.attn.wo[...]
        blk_m.ffn.w_in[...] = blk_g.ffn.w_in[...]
        blk_m.ffn.w_out[...] = blk_g.ffn.w_out[...]
    mha.embed[...] = gqa.embed[...]
    np.testing.assert_allclose(np.asarray(gqa(tokens())), np.asarray(mha(tokens())), atol=1e-5)


@pytest.mark.parametrize("kw,msg", [
    (dict(num_heads=5), "must divide model.d_model"),
    (dict(d_model=-8), "must be positive"),
    (dict(num_kv_heads=3), "must divide model.num_heads"),
    (dict(activation="tanh"), "is not one of"),
])
def test_bad_config_names_the_problem(kw, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(TINY, **kw).validate()


def test_dropped_block_is_identity_and_none_runs_all():
    """PLD (Zhang & He 2020): a dropped block is skipped, i.e. the 3-layer LM with block 1
    dropped equals the 2-layer LM made of blocks 0 and 2; layer_keep=None runs all."""
    cfg3 = dataclasses.replace(TINY, num_layers=3)
    model3 = LM(cfg3, rngs=nnx.Rngs(3))
    model2 = LM(dataclasses.replace(TINY, num_layers=2), rngs=nnx.Rngs(4))
    p3 = nnx.to_pure_dict(nnx.state(model3, nnx.Param))
    p2 = dict(p3, blocks={0: p3["blocks"][0], 1: p3["blocks"][2]})
    nnx.replace_by_pure_dict(state2 := nnx.state(model2, nnx.Param), p2)
    nnx.update(model2, state2)
    x = tokens(2, 12, seed=5)
    keep = jnp.array([True, False, True])
    dropped = jax.jit(lambda k: model3(x, layer_keep=k))(keep)
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(model2(x)), atol=1e-5)
    all_kept = jax.jit(lambda k: model3(x, layer_keep=k))(jnp.ones(3, bool))
    np.testing.assert_allclose(np.asarray(all_kept), np.asarray(model3(x)), atol=1e-5)
    assert not np.allclose(np.asarray(dropped), np.asarray(model3(x)), atol=1e-3)
    with pytest.raises(ValueError, match="layer_keep"):
        model3.apply(x, record="mask", layer_keep=keep)


def test_kept_block_update_is_scaled_by_inverse_keep_prob():
    """PLD (Zhang & He 2020, DeepSpeed): a kept block with keep probability p = 0.5 gives
    x + 2·(block(x) − x); scale 1 (or no scale) is the plain block."""
    cfg = dataclasses.replace(TINY, num_layers=1)
    model = LM(cfg, rngs=nnx.Rngs(7))
    x = tokens(2, 12, seed=6)
    keep = jnp.ones(1, bool)
    scaled = jax.jit(lambda k, s: model(x, layer_keep=k, layer_scale=s))(keep, jnp.array([1 / 0.5]))
    unit = jax.jit(lambda k, s: model(x, layer_keep=k, layer_scale=s))(keep, jnp.array([1.0]))
    np.testing.assert_allclose(np.asarray(unit), np.asarray(model(x)), atol=1e-5)
    # expected logits by hand: h = embed; h' = h + 2·(block(h) − h); head(final_norm(h'))
    h = jnp.take(model.embed[...], x, axis=0)
    seg = jnp.ones(x.shape, jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)
    hb = model.blocks[0](h, segment_ids=seg, positions=pos, sp=Sparsify(), record=None)[0]
    h2 = h + 2.0 * (hb - h)
    want = jnp.einsum("btd,dv->btv", model.final_norm(h2), model.embed[...].T if cfg.tie_embeddings else model.head[...])
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(want), rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(scaled), np.asarray(unit), atol=1e-3)

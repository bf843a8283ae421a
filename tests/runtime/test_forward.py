"""The forward's loss sums, with the head run in one piece or in chunks of positions
(`runtime.forward.token_sums`): the same sums, gradients and records, against a numpy
transcription of the cross-entropy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.runtime.forward import LOGITS_BYTES, forward, head_chunks

CFG = ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=64, activation="relu")
DEVICES = jax.device_count()  # forward's cap is per device, the batch assumed spread over all (8 here)


def _batch(b=2, t=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (b, t + 1))
    w = (rng.random((b, t)) < 0.8).astype(np.float32)
    return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
            "segment_ids": jnp.ones((b, t), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
            "loss_weights": jnp.asarray(w)}


def test_head_chunks_is_the_fewest_divisor_that_fits():
    assert head_chunks((8, 256, 49152), None) == 1
    assert head_chunks((8, 256, 49152), LOGITS_BYTES) == 8  # 402 MB of logits -> 8 slices of 50 MB
    assert head_chunks((8, 256, 49152), LOGITS_BYTES, devices=8) == 1
    assert head_chunks((2, 12, 97), 2 * 5 * 97 * 4) == 3  # 12 / 3 = 4 positions fit, 12 / 2 = 6 do not
    assert head_chunks((2, 12, 97), 1) == 12  # nothing fits: one position at a time


@pytest.mark.parametrize("record", [None, "mask"])
def test_chunked_head_gives_the_numpy_loss_and_the_same_gradients(record):
    model = LM(CFG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = _batch()

    logits = np.asarray(model(batch["inputs"]), np.float64)  # the unchunked head, by hand below
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    y, w = np.asarray(batch["targets"]), np.asarray(batch["loss_weights"])
    ce = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    want_loss, want_correct = (ce * w).sum(), ((logits.argmax(-1) == y) * w).sum()

    def sums(p, logits_bytes):
        return forward(graphdef, p, batch, record=record, logits_bytes=logits_bytes)

    cap = 2 * 4 * 97 * 4 // DEVICES  # 3 chunks of 4 positions
    assert head_chunks((2, 12, 97), cap, DEVICES) == 3
    whole, rec_whole = jax.jit(lambda p: sums(p, None))(params)
    chunked, rec_chunked = jax.jit(lambda p: sums(p, cap))(params)
    for out in (whole, chunked):
        np.testing.assert_allclose(float(out["loss_sum"]), want_loss, rtol=1e-5)
        assert float(out["correct_sum"]) == want_correct
        assert float(out["weight"]) == w.sum()
    assert jax.tree.map(jnp.shape, rec_whole) == jax.tree.map(jnp.shape, rec_chunked)
    for k in rec_whole:
        np.testing.assert_array_equal(np.asarray(rec_whole[k]), np.asarray(rec_chunked[k]))

    g_whole = jax.jit(jax.grad(lambda p: sums(p, None)[0]["loss_sum"]))(params)
    g_chunked = jax.jit(jax.grad(lambda p: sums(p, cap)[0]["loss_sum"]))(params)
    for a, b in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_chunked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_chunked_head_keeps_one_chunk_of_logits():
    """XLA's own memory analysis: chunking cuts the compiled eval step's temporaries by
    about the logits it no longer holds at once."""
    cfg = ModelConfig(vocab_size=16384, d_model=32, num_layers=1, num_heads=4, d_ff=64, activation="relu")
    graphdef, params = nnx.split(LM(cfg, rngs=nnx.Rngs(0)))
    batch = _batch(b=4, t=256)
    batch["inputs"] = batch["inputs"] % cfg.vocab_size

    def temp_bytes(logits_bytes):
        step = jax.jit(lambda p, bt: forward(graphdef, p, bt, logits_bytes=logits_bytes)[0])
        return step.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    logits = 4 * 256 * cfg.vocab_size * 4  # 64 MB
    whole, chunked = temp_bytes(None), temp_bytes(logits // 8 // DEVICES)
    assert head_chunks((4, 256, cfg.vocab_size), logits // 8 // DEVICES, DEVICES) == 8
    assert whole >= logits
    assert chunked <= whole - logits // 2, (whole, chunked)

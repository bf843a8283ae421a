"""The CPU layout of the attention (`nn.attention.grouped_attention`) against jax's own
`dot_product_attention` and a numpy transcription, with grouped heads and padding."""
import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.nn.attention import attention_mask, grouped_attention


def numpy_attention(q, k, v, mask):
    """Per head h, key head h // (H / G): softmax(q·kᵀ/√K, masked) · v, float64."""
    B, T, H, K = q.shape
    G = k.shape[2]
    out = np.zeros((B, T, H, K))
    for h in range(H):
        g = h // (H // G)
        s = np.einsum("btk,bsk->bts", q[:, :, h], k[:, :, g]) / np.sqrt(K)
        s = np.where(mask[:, 0], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, h] = np.einsum("bts,bsk->btk", p / p.sum(-1, keepdims=True), v[:, :, g])
    return out


def test_grouped_attention_matches_jax_and_numpy():
    rng = np.random.default_rng(0)
    B, T, H, G, K = 2, 7, 6, 2, 8
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, T, H, K), (B, T, G, K), (B, T, G, K)))
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 0, 0]])  # packed, and padded
    mask = np.asarray(attention_mask(jnp.asarray(segment_ids)))
    got = np.asarray(jax.jit(grouped_attention)(q, k, v, mask))
    ref = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask))
    real = segment_ids > 0
    np.testing.assert_allclose(got[real], ref[real], atol=2e-6)
    np.testing.assert_allclose(got[real], numpy_attention(q, k, v, mask)[real], atol=2e-6)
    assert np.isfinite(got).all()  # padding rows (no key allowed) stay finite


def test_grouped_attention_takes_a_score_scale():
    """Gemma's query_pre_attn_scalar: scores × scale instead of 1/√K, as jax's own."""
    rng = np.random.default_rng(1)
    B, T, H, G, K = 1, 5, 4, 1, 8
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, T, H, K), (B, T, G, K), (B, T, G, K)))
    mask = np.asarray(attention_mask(jnp.ones((B, T), jnp.int32)))
    got = np.asarray(jax.jit(grouped_attention, static_argnums=4)(q, k, v, mask, 12 ** -0.5))
    ref = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask, scale=12 ** -0.5))
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert np.abs(got - np.asarray(grouped_attention(q, k, v, mask))).max() > 1e-3

"""Adjusted Rand index (SSD §3): equals sklearn's adjusted_rand_score, jittable."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from sparsity_jax.errors import UserError
from sparsity_jax.ssd.ari import adjusted_rand_index


@pytest.mark.parametrize("n", [2, 17, 256, 6144])
@pytest.mark.parametrize("k", [1, 3, 32])
def test_matches_sklearn_on_random_labelings(n, k):
    rng = np.random.default_rng(n * 100 + k)
    a = rng.integers(0, k, n)
    b = rng.integers(0, k, n)
    close = np.where(rng.random(n) < 0.8, a, b)  # a correlated labeling, ARI well above 0
    for other in (b, close):
        expected = adjusted_rand_score(a, other)
        assert float(adjusted_rand_index(a, other)) == pytest.approx(expected, abs=1e-6)
        got = adjusted_rand_index(jnp.asarray(a), jnp.asarray(other), n_clusters=k)
        assert float(got) == pytest.approx(expected, abs=1e-6)


def test_relabelled_identical_partition_is_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 32, 6144)
    renamed = rng.permutation(32)[a]
    assert float(adjusted_rand_index(a, renamed)) == 1.0
    assert float(adjusted_rand_index(jnp.asarray(a), jnp.asarray(renamed), 32)) == 1.0


@pytest.mark.parametrize(
    "a, b",
    [
        ([0, 0, 0, 0], [5, 5, 5, 5]),  # both one cluster -> 1.0
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # both all singletons -> 1.0
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster vs singletons -> 0.0
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # the minimum, -0.5
        ([7], [2]),
        ([-1, -1, 4, 4, 9], [1, 1, 1, 0, 0]),  # arbitrary label values
    ],
)
def test_degenerate_cases_like_sklearn(a, b):
    expected = adjusted_rand_score(a, b)
    assert float(adjusted_rand_index(np.array(a), np.array(b))) == pytest.approx(expected, abs=1e-7)


def test_jit_and_vmap():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.integers(0, 8, (3, 500)))
    b = jnp.asarray(rng.integers(0, 8, (3, 500)))
    batched = jax.jit(jax.vmap(lambda u, v: adjusted_rand_index(u, v, 8)))(a, b)
    expected = [adjusted_rand_score(np.asarray(u), np.asarray(v)) for u, v in zip(a, b)]
    np.testing.assert_allclose(np.asarray(batched), expected, atol=1e-6)


def test_errors():
    with pytest.raises(UserError, match="n_clusters"):
        jax.jit(adjusted_rand_index)(jnp.zeros(4, int), jnp.zeros(4, int))
    with pytest.raises(UserError, match="equal length"):
        adjusted_rand_index(np.zeros(4, int), np.zeros(5, int))

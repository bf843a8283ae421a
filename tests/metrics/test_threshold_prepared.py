"""`prepare_search` + `find_prepared` (set-up once, many targets) equal `find_threshold`."""
import numpy as np
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.metrics.threshold_search import find_prepared, find_threshold, prepare_search
from tests.metrics.test_cett import make_data, two_layers


@pytest.mark.parametrize("kind", ["gated", "relu", "quantized"])
def test_prepared_equals_find_threshold(kind):
    a, w = two_layers(*make_data(kind, b=2, t=128, f=256, d=32))
    mask = np.ones(a.shape[1:3], bool)
    mask[1, 100:] = False  # padding never counts, prepared or not
    prep = prepare_search(a, w, mask)
    for target in (0.0, 0.07, 0.2, 1.0):
        want, got = find_threshold(a, w, target, mask), find_prepared(prep, target)
        assert got.threshold.shape == (2,)
        for x, y in zip(want, got):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)  # fusion order
    targets = np.array([0.01, 0.1, 0.3], np.float32)
    want, got = find_threshold(a, w, targets[None], mask), find_prepared(prep, targets)
    assert got.threshold.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(want.threshold), np.asarray(got.threshold), rtol=1e-6)
    with pytest.raises(UserError):
        find_prepared(prep, 1.5)
    with pytest.raises(UserError):
        prepare_search(a[0], w[0])

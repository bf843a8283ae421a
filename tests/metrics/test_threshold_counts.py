"""Exact pair counts past 2³¹, candidate extraction, the chunked finish, and CETT, the
CETT curve and the search's kernels called four ways (plainly, under jit on sharded
arrays, under shard_map, under pmap) against float64 numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sparsity_jax.metrics import threshold_pass
from sparsity_jax.metrics.cett import (
    Axes, add_words, count_words, cett, cett_curve, neuron_magnitudes, psum_words, sub_words, sum_words,
    words_float, words_min,
)
from sparsity_jax.metrics.threshold_pass import eval_kernel, first_true, setup_kernel
from sparsity_jax.metrics.threshold_search import find_threshold
from tests.metrics.test_cett import make_data, np_cett

N_DEV = 8


def value(w) -> int:
    w = np.asarray(w)
    return int(w[..., 0]) * 65536 + int(w[..., 1])


def test_word_counts_are_exact_past_2_31():
    # 2²⁰ rows of 4096 counted pairs: N·F = 2³², the int32 sum would wrap to 0.
    rows = np.full((1 << 20,), 4096, np.int32)
    assert value(jax.jit(sum_words)(rows)) == 1 << 32
    assert float(words_float(sum_words(rows))) == 2.0**32
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 2**31 - 1, size=(3000,), dtype=np.int64).astype(np.int32)  # total ≈ 2⁴¹
    assert value(sum_words(rows)) == int(rows.astype(np.int64).sum())
    flags = rng.random((300, 70)) < 0.3
    assert value(count_words(flags)) == int(flags.sum())
    # Per-device partial counts just below 2³¹, summed over 8 devices (pmap and shard_map).
    part = np.broadcast_to(np.asarray(sum_words(np.array([2**31 - 1], np.int32))), (N_DEV, 2))
    by_pmap = jax.pmap(lambda w: psum_words(w, "i"), axis_name="i")(part)[0]
    mesh = Mesh(np.array(jax.devices()), ("i",))
    by_shard_map = jax.jit(jax.shard_map(lambda w: psum_words(w[0], "i"), mesh=mesh, in_specs=P("i"),
                                         out_specs=P()))(part)
    for w in (by_pmap, by_shard_map):
        assert value(w) == N_DEV * (2**31 - 1)
    # Arithmetic the search does on bracket counts: exact differences, clipped widths.
    big, small = np.array([1 << 17, 5], np.int32), np.array([1 << 17, 0], np.int32)  # 2³³ + 5, 2³³
    assert value(sub_words(big, small)) == 5 and float(words_float(sub_words(big, small))) == 5.0
    assert value(sub_words(small, big)) == -5 and value(add_words(big, small)) == (1 << 34) + 5
    assert int(words_min(big, 4097)) == 4097 and int(words_min(np.array([0, 3], np.int32), 4097)) == 3


@pytest.mark.parametrize("density", [0.002, 0.3])
def test_both_extraction_paths_find_the_same_entries(density):
    rng = np.random.default_rng(1)
    flags = jnp.asarray(rng.random((64, 48)) < density)
    size = 64
    got = [jax.jit(functools.partial(first_true, size=size, flat=flat))(flags) for flat in (True, False)]
    pairs = [{(int(r), int(c)) for r, c, ok in zip(*map(np.asarray, g)) if ok} for g in got]
    want = {(int(r), int(c)) for r, c in zip(*np.nonzero(np.asarray(flags)))}
    if len(want) <= size:
        assert pairs[0] == pairs[1] == want
    else:  # more than `size`: each path returns `size` true entries
        assert len(pairs[0]) == len(pairs[1]) == size and pairs[0] <= want and pairs[1] <= want


def test_chunked_finish_equals_one_chunk(monkeypatch):
    """Tiny finish chunks (many tokens' runs split across chunks) give the same answer."""
    a, w = make_data("gated", seed=5, b=2, t=128, f=128, d=32)
    targets = np.array([0.02, 0.1, 0.3], np.float32)
    want = find_threshold(a, w, targets)
    monkeypatch.setattr(threshold_pass, "_FINISH_FLOATS", 16 * 32)  # the minimum chunk: 64 candidates
    got = find_threshold(a, w, targets, window=2048)  # another static window: a fresh trace
    np.testing.assert_array_equal(np.asarray(got.threshold), np.asarray(want.threshold))
    np.testing.assert_allclose(np.asarray(got.realised_cett), np.asarray(want.realised_cett), atol=1e-6)


def four_ways(fn, args, split):
    """{style: fn(axes, *args)}: tokens split 8-way over the arguments' axis `split[i]`
    (None: replicated); `fn` reduces over Axes(tokens=...) when mapped."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    specs = tuple(P() if ax is None else P(*([None] * ax), "data") for ax in split)
    sharded = tuple(jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(args, specs))
    local = functools.partial(fn, Axes(tokens="data"))
    pieces = tuple(x if ax is None else x.reshape(x.shape[:ax] + (N_DEV, -1) + x.shape[ax + 1:])
                   for x, ax in zip(args, split))
    return {
        "plain": fn(Axes(), *args),
        "jit-sharded": jax.jit(functools.partial(fn, Axes()))(*sharded),
        "shard_map": jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P()))(*sharded),
        "pmap": jax.tree.map(lambda x: x[0], jax.pmap(local, axis_name="data", in_axes=split)(*pieces)),
    }


@pytest.fixture(scope="module")
def layers():
    """Two layers of (64 tokens, F = 32, d = 16) scores, 8 padding tokens, numpy float64 refs."""
    data = [make_data(kind, seed=2, b=1, t=64, f=32, d=16) for kind in ("relu", "gated")]
    a = np.stack([x[0][0] for x in data])  # (L, N, F)
    w = np.stack([x[1] for x in data])
    real = np.ones(64, bool)
    real[5:13] = False
    mag = np.stack([np.asarray(neuron_magnitudes(a[i], w[i])) for i in range(2)])
    t = np.array([np.quantile(mag[i][real], 0.6) for i in range(2)], np.float32)
    return a, w, real, mag, t


def test_cett_and_curve_four_ways_match_numpy(layers):
    a, w, real, mag, t = layers
    want = [np_cett(a[i], w[i], mag[i], t[i], real) for i in range(2)]
    cett_ways = four_ways(lambda ax, a, w, t, m: cett(a, w, t, m, axis_name=ax.tokens), (a, w, t, real),
                          (1, None, None, 0))
    grid = np.stack([t * 0.5, t, t * 1.5], axis=1)
    curve_ways = four_ways(lambda ax, a, w, g, m: cett_curve(a, w, g, m, axis_name=ax.tokens), (a, w, grid, real),
                           (1, None, None, 0))
    want_curve = [[np_cett(a[i], w[i], mag[i], g, real) for g in grid[i]] for i in range(2)]
    want_sparsity = [[np.mean(mag[i][real] < g) for g in grid[i]] for i in range(2)]
    for style in cett_ways:
        np.testing.assert_allclose(cett_ways[style], want, atol=1e-5, err_msg=style)
        np.testing.assert_allclose(curve_ways[style].realised_cett, want_curve, atol=1e-5, err_msg=style)
        np.testing.assert_allclose(curve_ways[style].sparsity, want_sparsity, atol=1e-6, err_msg=style)


def test_search_kernels_four_ways_match_numpy(layers):
    a, w, real, mag, t = layers
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    norms = np.linalg.norm(np.einsum("lnf,lfd->lnd", a64, w64), axis=-1)
    inv = np.where(real & (norms > 0), 1 / np.where(norms > 0, norms, 1), 0).astype(np.float32)
    pos_P, here_P = np.array([0, 20, 63], np.int32), np.array([True, True, False])
    t_LxK = np.stack([t, t * 2], axis=1)
    on_LxK = np.array([[True, False], [True, True]])
    setup = four_ways(lambda ax, *x: setup_kernel(ax, *x)[1], (a, w, real, pos_P, here_P), (1, None, 0, None, None))
    evals = four_ways(eval_kernel, (a, w, real, inv, t_LxK, on_LxK), (1, None, 0, 1, None, None))
    real_mag = mag[:, real]
    for style in setup:
        tot = setup[style]
        assert list(np.array(tot.n_real, ndmin=1)) == [real.sum()], style
        np.testing.assert_array_equal(tot.n_valid, [(norms[i][real] > 0).sum() for i in range(2)])
        assert [value(x) for x in tot.n_pos] == [int((real_mag[i] > 0).sum()) for i in range(2)], style
        assert [value(x) for x in tot.n_zero] == [int((real_mag[i] == 0).sum()) for i in range(2)], style
        np.testing.assert_allclose(tot.pos_max, real_mag.reshape(2, -1).max(axis=1), rtol=1e-6)
        want_rows = np.concatenate([a[:, [0, 20]], np.zeros_like(a[:, :1])], axis=1)  # the third is elsewhere
        np.testing.assert_array_equal(tot.proxy_LxPxF, want_rows, err_msg=style)
        ratio, dropped = evals[style]
        for i in range(2):
            for k in range(2):
                if not on_LxK[i, k]:
                    assert float(ratio[i, k]) == 0 and value(dropped[i, k]) == 0
                    continue
                want = np_cett(a[i], w[i], mag[i], t_LxK[i, k], real) * (norms[i][real] > 0).sum()
                assert float(ratio[i, k]) == pytest.approx(want, rel=1e-5), style
                assert value(dropped[i, k]) == int((real_mag[i] < t_LxK[i, k]).sum()), style

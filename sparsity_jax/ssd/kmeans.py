"""Balanced k-means of FFN neurons: SSD's dense→sparse clustering (SSD §4.2, App. A).

SSD splits the F neurons of a ReLU FFN into N experts of exactly F/N neurons by
balanced k-means (Malinen & Fränti, 2014) of the rows of W_i (the input-side kernel,
one row per neuron, `x_FxD` here), assuming neurons with similar input weights fire
together. `balanced_kmeans` clusters once; `moefy_clustering` is SSD Eq. 3.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from sparsity_jax.errors import UserError

Array = jax.Array

_TEMPS = tuple(10.0 ** (-k / 2) for k in range(2, 11))  # T / score range: 1e-1 … 1e-5
_COUNT_TOL = 0.05  # a level ends once every soft cluster count is within this of C
_MAX_NEWTON = 30  # Newton steps per level at most
_EXACT = lax.Precision.HIGHEST  # full-f32 matmuls (no bf16/TF32 passes on TPU/GPU)


def balanced_kmeans(
    x_FxD: Array,
    n_clusters: int,
    *,
    key: Array,
    init_labels: Array | None = None,
    n_iter: int = 100,
    normalize: bool = True,
) -> tuple[Array, Array, Array]:
    """Clusters the F rows of `x_FxD` into `n_clusters` groups of exactly F/N rows.

    The public code (thunlp/MoEfication, `faster_moefication`) L2-normalises the rows
    first, then alternates a balanced assignment (the auction algorithm of BASE layers,
    Lewis et al. 2021) with centroid updates and keeps the iterate of lowest WCSS. Here
    the same loop runs in pure JAX, one jitted program, no host loop per iteration:
      seed    k-means++ (random init, from `key`) or the means of `init_labels` (warm start);
      repeat  balanced assignment (`_balanced_assign`); c_n ← cluster means; WCSS; keep
              the best labels seen; stop when the labels repeat or after `n_iter`
              iterations.

    Args:
      x_FxD: (F, d) rows to cluster (the FFN input kernel, one row per neuron).
      n_clusters: N, number of clusters; must divide F.
      key: PRNG key for the k-means++ seeding (unused with `init_labels`).
      init_labels: optional (F,) int labels in [0, N) to warm-start from (centroids =
        their cluster means), e.g. the previous checkpoint's clustering. Need not be
        balanced; every cluster should be non-empty.
      n_iter: maximum assignment/update iterations (stops early once labels repeat);
        a traced value, so changing it does not recompile.
      normalize: L2-normalise rows first (as the public MoEfication code does).

    Returns:
      labels_F: (F,) int32 cluster of each row; every cluster has exactly F/N rows.
      centroids_NxD: (N, d) float32 cluster means of the (normalised) rows.
      wcss: () float32 within-cluster sum of squared distances of the labels (SSD
        App. A: WCSS = Σ_i ‖x_i − c_{s_i}‖² over the (normalised) rows, c_n = cluster
        mean).
    """
    if jnp.ndim(x_FxD) != 2:
        raise UserError(f"balanced_kmeans needs a 2-D (F, d) array, got shape {jnp.shape(x_FxD)}.")
    num_rows = jnp.shape(x_FxD)[0]
    if n_clusters < 1 or num_rows % n_clusters:
        raise UserError(
            f"The number of experts ({n_clusters}) must divide the FFN width ({num_rows}); "
            "choose n_clusters among the divisors of F."
        )
    if n_iter < 1:
        raise UserError(f"balanced_kmeans needs n_iter >= 1, got {n_iter}.")
    if init_labels is not None and jnp.shape(init_labels) != (num_rows,):
        raise UserError(
            f"init_labels must have shape ({num_rows},), got {jnp.shape(init_labels)}."
        )
    return _balanced_kmeans(x_FxD, key, init_labels, n_iter, n_clusters, normalize)


def moefy_clustering(
    x_FxD: Array,
    n_clusters: int,
    *,
    key: Array,
    prev_labels: Array | None = None,
    n_iter: int = 100,
    normalize: bool = True,
) -> tuple[Array, Array, Array]:
    """SSD Eq. 3: the lower-WCSS of a random-init and a warm-started balanced k-means.

    SSD clusters twice, from a random init and warm-started from the previous
    checkpoint's clustering (`prev_labels`), and keeps the lower WCSS.

    Without `prev_labels` (first conversion) this is one random-init `balanced_kmeans`.
    Returns (labels_F, centroids_NxD, wcss) of the better clustering; ties keep the warm
    start (it changes the experts least).
    """
    kwargs = dict(key=key, n_iter=n_iter, normalize=normalize)
    fresh = balanced_kmeans(x_FxD, n_clusters, **kwargs)
    if prev_labels is None:
        return fresh
    warm = balanced_kmeans(x_FxD, n_clusters, init_labels=prev_labels, **kwargs)
    keep_warm = warm[2] <= fresh[2]
    return jax.tree.map(lambda w, f: jnp.where(keep_warm, w, f), warm, fresh)


def permutation_from_labels(labels_F: Array, n_clusters: int) -> Array:
    """(F,) permutation with x[perm] = cluster 0's rows, then cluster 1's, ...

    Order within a cluster is the original order (stable sort). With balanced labels,
    `x[perm].reshape(n_clusters, F // n_clusters, d)` has one expert per block.
    `n_clusters` documents the label range; the sort does not need it.
    """
    del n_clusters
    return jnp.argsort(labels_F, stable=True).astype(jnp.int32)


def inverse_permutation(perm_F: Array) -> Array:
    """(F,) inverse of a permutation: y = x[perm] ⇒ y[inverse_permutation(perm)] = x."""
    num = perm_F.shape[0]
    return jnp.zeros(num, jnp.int32).at[perm_F].set(jnp.arange(num, dtype=jnp.int32))


def _cluster_means(x_FxD: Array, labels_F: Array, n_clusters: int) -> Array:
    sums_NxD = jax.ops.segment_sum(x_FxD, labels_F, n_clusters)
    counts_N = jax.ops.segment_sum(jnp.ones_like(labels_F, x_FxD.dtype), labels_F, n_clusters)
    return sums_NxD / jnp.maximum(counts_N, 1.0)[:, None]


def _wcss(x_FxD: Array, labels_F: Array, centroids_NxD: Array) -> Array:
    return jnp.sum(jnp.square(x_FxD - centroids_NxD[labels_F]))


def _kmeanspp_seed(x_FxD: Array, n_clusters: int, key: Array) -> Array:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): (N, d) initial centroids."""
    first_key, key = jax.random.split(key)
    first = x_FxD[jax.random.randint(first_key, (), 0, x_FxD.shape[0])]
    cent_NxD = jnp.zeros((n_clusters, x_FxD.shape[1]), x_FxD.dtype).at[0].set(first)
    d2_F = jnp.sum(jnp.square(x_FxD - first), axis=-1)

    def pick(n, carry):
        cent_NxD, d2_F = carry
        logits_F = jnp.where(d2_F > 0, jnp.log(jnp.maximum(d2_F, 1e-30)), -jnp.inf)
        logits_F = jnp.where(jnp.any(d2_F > 0), logits_F, 0.0)  # all rows equal
        row = x_FxD[jax.random.categorical(jax.random.fold_in(key, n), logits_F)]
        d2_F = jnp.minimum(d2_F, jnp.sum(jnp.square(x_FxD - row), axis=-1))
        return cent_NxD.at[n].set(row), d2_F

    return lax.fori_loop(1, n_clusters, pick, (cent_NxD, d2_F))[0]


def _smoothed_dual(score_FxN: Array, price_N: Array, temp: Array) -> Array:
    """Entropic dual g_T(p) = T Σ_i logsumexp_n((s_in − p_n)/T) + C Σ_n p_n (convex in p)."""
    cap = score_FxN.shape[0] // score_FxN.shape[1]
    lse_F = jax.nn.logsumexp((score_FxN - price_N) / temp, axis=1)
    return temp * jnp.sum(lse_F) + cap * jnp.sum(price_N)


def _newton_step(score_FxN: Array, price_N: Array, temp: Array) -> tuple[Array, Array]:
    """One damped Newton step on g_T; returns (new prices, max |soft count − C|)."""
    num, n_clusters = score_FxN.shape
    cap = num // n_clusters
    pi_FxN = jax.nn.softmax((score_FxN - price_N) / temp, axis=1)
    count_N = jnp.sum(pi_FxN, axis=0)
    gram_NxN = jnp.matmul(pi_FxN.T, pi_FxN, precision=_EXACT)
    hess_NxN = (jnp.diag(count_N) - gram_NxN) / temp  # null space: the all-ones vector
    ridge = 1e-6 * jnp.trace(hess_NxN) / n_clusters + 1e-20
    step_N = jnp.linalg.solve(hess_NxN + ridge * jnp.eye(n_clusters), count_N - cap)
    step_N = jnp.where(jnp.all(jnp.isfinite(step_N)), step_N, temp * (count_N - cap))
    step_N = step_N - jnp.mean(step_N)
    g0, slope = _smoothed_dual(score_FxN, price_N, temp), -(count_N - cap) @ step_N

    def too_long(state):  # Armijo backtracking
        size, tries = state
        g = _smoothed_dual(score_FxN, price_N + size * step_N, temp)
        return (g > g0 + 0.25 * size * slope) & (tries < 30)

    size, _ = lax.while_loop(too_long, lambda st: (0.5 * st[0], st[1] + 1), (1.0, 0))
    price_N = price_N + size * step_N
    count_N = jnp.sum(jax.nn.softmax((score_FxN - price_N) / temp, axis=1), axis=0)
    return price_N, jnp.max(jnp.abs(count_N - cap))


def _balanced_prices(score_FxN: Array, price_N: Array) -> Array:
    """Cluster prices p at which each cluster is (nearly) every C-th point's favourite.

    Newton's method on the entropic dual g_T, annealing T over `_TEMPS` (times the score
    range), each level run until the soft counts are within `_COUNT_TOL` of C.
    """
    span = jnp.maximum(jnp.max(score_FxN) - jnp.min(score_FxN), 1e-6)

    def level(price_N, temp):
        def unconverged(state):
            return (state[1] > _COUNT_TOL) & (state[2] < _MAX_NEWTON)

        def body(state):
            return (*_newton_step(score_FxN, state[0], temp), state[2] + 1)

        return lax.while_loop(unconverged, body, (price_N, jnp.inf, 0))[0], None

    return lax.scan(level, price_N, span * jnp.asarray(_TEMPS, jnp.float32))[0]


def _rank_within(group_F: Array, key_F: Array, n_groups: int) -> Array:
    """Rank of each point among those with the same group, by decreasing key (0 = best)."""
    order_F = jnp.lexsort((-key_F, group_F))
    counts_G = jnp.bincount(group_F, length=n_groups)
    starts_G = jnp.cumsum(counts_G) - counts_G
    ranks_sorted = jnp.arange(group_F.shape[0]) - starts_G[group_F[order_F]]
    return jnp.zeros_like(group_F).at[order_F].set(ranks_sorted)


def _round_to_capacity(value_FxN: Array) -> Array:
    """Exact-size labels from priced values v = s − p (argmax, then a greedy fix-up).

    Each cluster keeps its C members with the largest margin (best − second-best value);
    the rest, in parallel rounds, propose to their best cluster with free slots and each
    cluster accepts its best proposers up to capacity. Every round fills a cluster or
    places everyone, so at most N rounds; at converged prices nobody moves.
    """
    num, n_clusters = value_FxN.shape
    cap = num // n_clusters
    top_val, top_idx = lax.top_k(value_FxN, 2)
    labels_F = top_idx[:, 0].astype(jnp.int32)
    keep_F = _rank_within(labels_F, top_val[:, 0] - top_val[:, 1], n_clusters) < cap
    labels_F = jnp.where(keep_F, labels_F, -1)
    free_N = cap - jnp.bincount(jnp.where(keep_F, labels_F, n_clusters), length=n_clusters + 1)[:-1]

    def propose(state):
        labels_F, free_N = state
        waiting_F = labels_F < 0
        open_FxN = jnp.where(free_N > 0, value_FxN, -jnp.inf)
        target_F = jnp.argmax(open_FxN, axis=1).astype(jnp.int32)
        group_F = jnp.where(waiting_F, target_F, n_clusters)
        rank_F = _rank_within(group_F, jnp.max(open_FxN, axis=1), n_clusters + 1)
        accept_F = waiting_F & (rank_F < free_N[target_F])
        taken_N = jnp.bincount(jnp.where(accept_F, target_F, n_clusters), length=n_clusters + 1)
        return jnp.where(accept_F, target_F, labels_F), free_N - taken_N[:-1]

    return lax.while_loop(lambda st: jnp.any(st[0] < 0), propose, (labels_F, free_N))[0]


def _balanced_assign(score_FxN: Array, price_N: Array) -> tuple[Array, Array]:
    """Balanced assignment maximising Σ_i s_i,label_i: (labels_F, prices_N for warm start).

    The transportation problem "F points → N clusters of capacity C = F/N, maximise
    Σ_i s_i,label_i" with s_in = 2 x_i·c_n − ‖c_n‖² (= minimising squared distance). Its
    LP dual has only N variables, the cluster prices p: at optimal prices each point's
    favourite cluster argmax_n (s_in − p_n) gives every cluster exactly C points. We find
    p by Newton's method on the entropy-smoothed dual
    g_T(p) = T Σ_i logsumexp_n((s_in − p_n)/T) + C Σ_n p_n (an N×N solve per step,
    Armijo backtracking), annealing T from 1e-1 to 1e-5 of the score range, warm-started
    from the previous iteration's prices (`_balanced_prices`); then take the argmax and
    make sizes exact: each cluster keeps its C largest-margin members and the few
    leftovers are placed greedily into free slots (parallel proposal rounds, at most N;
    `_round_to_capacity`).

    Why not the alternatives: a greedy fill of sorted (point, cluster) pairs is serial
    and not optimal; Jacobi auctions (the family of the BASE-layers algorithm the SSD
    code uses) need many rounds per assignment because prices crawl up by tiny steps
    when many points are near-tied; the dual Newton needs few steps of dense
    O(F·N + F·N²) work and runs on any backend.
    """
    num, n_clusters = score_FxN.shape
    if n_clusters == 1:
        return jnp.zeros(num, jnp.int32), price_N
    price_N = _balanced_prices(score_FxN, price_N)
    return _round_to_capacity(score_FxN - price_N), price_N


@partial(jax.jit, static_argnums=(4, 5))
def _balanced_kmeans(x_FxD, key, init_labels, n_iter, n_clusters, normalize):
    x_FxD = x_FxD.astype(jnp.float32)
    if normalize:
        norms_F = jnp.linalg.norm(x_FxD, axis=-1, keepdims=True)
        x_FxD = x_FxD / jnp.maximum(norms_F, 1e-12)
    num = x_FxD.shape[0]
    if init_labels is None:
        cent_NxD = _kmeanspp_seed(x_FxD, n_clusters, key)
        prev_F = jnp.full(num, -1, jnp.int32)
    else:
        prev_F = init_labels.astype(jnp.int32)
        cent_NxD = _cluster_means(x_FxD, prev_F, n_clusters)

    def step(state):
        it, prev_F, cent_NxD, price_N, best_F, best_wcss, _ = state
        dots_FxN = jnp.matmul(x_FxD, cent_NxD.T, precision=_EXACT)
        score_FxN = 2.0 * dots_FxN - jnp.sum(jnp.square(cent_NxD), axis=-1)
        labels_F, price_N = _balanced_assign(score_FxN, price_N)
        cent_NxD = _cluster_means(x_FxD, labels_F, n_clusters)
        wcss = _wcss(x_FxD, labels_F, cent_NxD)
        better = wcss < best_wcss
        best_F = jnp.where(better, labels_F, best_F)
        best_wcss = jnp.where(better, wcss, best_wcss)
        done = jnp.all(labels_F == prev_F)
        return it + 1, labels_F, cent_NxD, price_N, best_F, best_wcss, done

    price0 = jnp.zeros(n_clusters, jnp.float32)
    state = (0, prev_F, cent_NxD, price0, prev_F, jnp.array(jnp.inf, jnp.float32), False)
    state = lax.while_loop(lambda s: (s[0] < n_iter) & ~s[-1], step, state)
    best_F, best_wcss = state[4], state[5]
    return best_F, _cluster_means(x_FxD, best_F, n_clusters), best_wcss

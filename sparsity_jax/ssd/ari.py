"""Adjusted Rand index of two clusterings: SSD's activation-pattern similarity (SSD §3, §4.3).

SSD compares the neuron clustering of consecutive checkpoints (every M = 3000 steps)
with the ARI (Hubert & Arabie, 1985; "Rand, 1971" in the paper) and switches dense→sparse
once it exceeds τ = 0.9. ARI is 1 for identical partitions (whatever the label names), ≈0
for independent random ones, and can be negative (≥ −0.5).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.errors import UserError

Array = jax.Array


def adjusted_rand_index(labels_a: Array, labels_b: Array, n_clusters: int | None = None) -> Array:
    """ARI between two labelings of the same n points; a () float array.

    Args:
      labels_a, labels_b: (n,) integer cluster labels.
      n_clusters: static upper bound on the labels (all in [0, n_clusters)); with it the
        function is jittable (call it inside jit with this argument). Labels outside the
        range are not checked (they would drop out of the table). Without it, any
        integer labels are accepted and renumbered on the host (needs concrete arrays).

    Same formula and degenerate cases as `sklearn.metrics.adjusted_rand_score` (≥ 1.3),
    written with the pair-confusion counts of the contingency table n_ij:
      S = Σ n_ij², A = Σ_i a_i², B = Σ_j b_j² (a, b: row/column sums), n points;
      tp = S − n, fp = B − S, fn = A − S, tn = n² − A − B + S;
      ARI = 2 (tp·tn − fn·fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)),
    and ARI = 1 when fn = fp = 0 (the partitions agree on every pair: identical
    partitions, both a single cluster, both all singletons, n ≤ 1). The contingency
    table is counted in int32, then squared and combined in the default float dtype
    (float32 unless x64 is on): no overflow for any n.
    """
    if jnp.ndim(labels_a) != 1 or jnp.shape(labels_a) != jnp.shape(labels_b):
        raise UserError(
            f"ARI needs two 1-D label arrays of equal length, got shapes "
            f"{jnp.shape(labels_a)} and {jnp.shape(labels_b)}."
        )
    if n_clusters is None:
        if isinstance(labels_a, jax.core.Tracer) or isinstance(labels_b, jax.core.Tracer):
            raise UserError("Pass a static n_clusters to adjusted_rand_index under jit.")
        labels_a = np.unique(np.asarray(labels_a), return_inverse=True)[1].reshape(-1)
        labels_b = np.unique(np.asarray(labels_b), return_inverse=True)[1].reshape(-1)
        n_clusters = int(max(labels_a.max(initial=0), labels_b.max(initial=0))) + 1
    return _ari(jnp.asarray(labels_a), jnp.asarray(labels_b), n_clusters)


@partial(jax.jit, static_argnums=2)
def _ari(labels_a: Array, labels_b: Array, n_clusters: int) -> Array:
    num = labels_a.shape[0]
    dtype = jnp.result_type(float)
    table_KxK = jnp.zeros((n_clusters, n_clusters), jnp.int32).at[labels_a, labels_b].add(1)
    table_KxK = table_KxK.astype(dtype)
    sum_sq = jnp.sum(jnp.square(table_KxK))
    rows_sq = jnp.sum(jnp.square(jnp.sum(table_KxK, axis=1)))
    cols_sq = jnp.sum(jnp.square(jnp.sum(table_KxK, axis=0)))
    tp, fp, fn = sum_sq - num, cols_sq - sum_sq, rows_sq - sum_sq
    tn = float(num) * num - rows_sq - cols_sq + sum_sq
    denom = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    agree = (fn == 0) & (fp == 0)
    ari = 2.0 * (tp * tn - fn * fp) / jnp.where(agree, 1.0, denom)
    return jnp.where(agree, jnp.ones((), dtype), ari)

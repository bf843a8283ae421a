"""SSD (switchable sparse-dense training): MoEfication by balanced k-means and the
adjusted Rand index that times the switches."""
from sparsity_jax.ssd.ari import adjusted_rand_index
from sparsity_jax.ssd.convert import block_labels, centres_from_params, dense_to_moe
from sparsity_jax.ssd.kmeans import balanced_kmeans, inverse_permutation, moefy_clustering, permutation_from_labels

__all__ = ["adjusted_rand_index", "block_labels", "centres_from_params", "dense_to_moe", "balanced_kmeans", "inverse_permutation", "moefy_clustering",
           "permutation_from_labels"]

"""sparsity_jax.scaling"""

"""sparsity_jax.nn"""

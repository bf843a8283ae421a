"""sparsity_jax.search"""

"""sparsity_jax.data"""

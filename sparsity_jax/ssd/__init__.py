"""sparsity_jax.ssd"""

"""sparsity_jax.metrics"""

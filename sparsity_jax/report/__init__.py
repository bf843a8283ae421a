"""sparsity_jax.report"""

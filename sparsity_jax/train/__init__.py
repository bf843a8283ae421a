"""sparsity_jax.train"""

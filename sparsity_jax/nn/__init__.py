"""Flax NNX modules: activations, the instrumented FFN with sparsity modes, attention, the LM."""
from sparsity_jax.nn.activations import ACTIVATIONS, get_activation
from sparsity_jax.nn.ffn import FFN, MODES, Sparsify
from sparsity_jax.nn.model import LM, ModelConfig

__all__ = ["ACTIVATIONS", "FFN", "LM", "MODES", "ModelConfig", "Sparsify", "get_activation"]

"""Flax NNX modules: activations, the instrumented FFN with sparsity modes, attention, the LM."""
from sparsity_jax.nn.activations import ACTIVATIONS, get_activation
from sparsity_jax.nn.ffn import FFN, MODES, Sparsify
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.moe import MoESpec, moe_ffn

__all__ = ["ACTIVATIONS", "FFN", "LM", "MODES", "MoESpec", "ModelConfig", "Sparsify", "get_activation", "moe_ffn"]

"""Flax NNX modules: activations, the sparsity rules, the instrumented FFN (dense,
thresholded, top-k, FAT-ε, unit-masked or MoE over one parameter set), attention and the LM."""
from sparsity_jax.nn.activations import ACTIVATIONS, get_activation
from sparsity_jax.nn.ffn import FFN
from sparsity_jax.nn.model import LM, ModelConfig
from sparsity_jax.nn.moe import moe_ffn
from sparsity_jax.nn.sparsify import MODES, MoESpec, Sparsify, fat_keep, threshold_keep, topk_keep

__all__ = ["ACTIVATIONS", "FFN", "LM", "MODES", "MoESpec", "ModelConfig", "Sparsify", "fat_keep", "get_activation",
           "moe_ffn", "threshold_keep", "topk_keep"]

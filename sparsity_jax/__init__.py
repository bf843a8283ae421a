"""sparsity_jax: train Transformer LMs in JAX/Flax NNX while measuring, searching and
exploiting their activation sparsity.

Sub-packages (none of `nn`, `metrics` imports TensorFlow):
  nn       Flax NNX modules (activations, FFN with sparsity modes, attention, LM).
  metrics  pure functions over arrays (activation ratio, hidden-unit use, CETT, ...).
  data     seqio tasks and the batch iterator (imports TensorFlow).
  train    mesh/sharding, optimizer, checkpoints, train/eval steps, the loop.
"""

__version__ = "0.1.0"

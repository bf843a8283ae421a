"""KV-cache decoding with sparse FFNs that really skip inactive neurons.

`Decoder` (decode.py) prefills prompts and decodes one token at a time against a
preallocated cache (cache.py); its FFN takes the model's own `Sparsify` and reads only
the neurons its mode keeps (gathered.py: the dense, threshold and predicted modes, the
gather tables and the budgeted sparse form, by single neurons or by contiguous blocks);
budget.py sizes the per-token neuron budgets from measured activations;
neuron_order.py permutes each layer's neurons so co-active ones share blocks (function
unchanged); kernels/ holds the block gathers (XLA, Pallas TPU, Pallas GPU); sampling.py
draws tokens.
"""
from sparsity_jax.infer.decode import Decoder, Generation, masked_forward, place
from sparsity_jax.infer.gathered import MODES

__all__ = ["Decoder", "Generation", "MODES", "masked_forward", "place"]

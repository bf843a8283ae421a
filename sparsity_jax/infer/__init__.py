"""KV-cache decoding with sparse FFNs that really skip inactive neurons.

`Decoder` (decode.py) prefills prompts and decodes one token at a time against a
preallocated cache (cache.py); its FFN reads only the neurons a chooser picks
(choosers.py: dense, threshold, predicted; ffn.py: the gather-layout tables and the
budgeted sparse form, by single neurons or by contiguous blocks); budget.py sizes the
per-token neuron budgets from measured activations; layout.py permutes each layer's
neurons so co-active ones share blocks (function unchanged); kernels/ holds the block
gathers (XLA, Pallas TPU, Pallas GPU); sampling.py draws tokens.
"""
from sparsity_jax.infer.choosers import CHOOSERS, AllNeurons, Predicted, Threshold
from sparsity_jax.infer.decode import Decoder, Generation, masked_forward, place

__all__ = ["CHOOSERS", "AllNeurons", "Decoder", "Generation", "Predicted", "Threshold", "masked_forward", "place"]

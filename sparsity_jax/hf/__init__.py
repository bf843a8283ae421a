"""Hugging Face checkpoints in and out: `load_pretrained` reads a local HF directory
(Llama, Mistral, Qwen2/3, Gemma, Gemma 3, MiniCPM and their ReLU-fied variants) or a
llama / gemma3 GGUF file (`gguf.py`) as this project's `LM`; `export` writes a gated
model back (see `config.py` for what is supported)."""
from sparsity_jax.hf.config import FAMILIES, HIDDEN_ACTS, model_config
from sparsity_jax.hf.load import inspect, load_params, load_pretrained

__all__ = ["FAMILIES", "HIDDEN_ACTS", "inspect", "load_params", "load_pretrained", "model_config"]

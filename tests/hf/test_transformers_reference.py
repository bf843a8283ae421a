"""An exported gated model loads in transformers and gives our logits (runs only where
torch and transformers are installed: the optional `reference` extra; skipped otherwise).
Its output, run once in such an environment, is bench/results/hf_export_reference.txt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparsity_jax.hf import load_pretrained  # noqa: E402
from sparsity_jax.hf.run import export_run  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
STOCK = ("llama_gqa_llama3", "llama_relu_tied_linear", "llama_relu2", "mistral_window", "qwen2_bias", "qwen3_qknorm",
         "gemma", "gemma3_text")


@pytest.mark.parametrize("name", STOCK)
def test_exported_model_loads_in_transformers_with_our_logits(name, tmp_path):
    model, cfg = load_pretrained(FIXTURES / name, dtype="float32")
    tokens = np.load(FIXTURES / name / "reference.npz")["tokens"]
    ours = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))
    out = export_run(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg, tmp_path / name, log=lambda m: None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    err = float(np.abs(theirs - ours).max() / np.abs(theirs).max())
    print(f"{name}: {type(hf).__name__} ({hf.config.hidden_act}) max |Δlogits| / scale = {err:.2e}")
    assert err < 1e-4, name

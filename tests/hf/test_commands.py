"""`sparsity-jax import` / `export` / `train --init-from` in-process: an imported fixture
with its own tokenizer runs cett, ppl, predictor, affinity and generate end to end;
import → export → import is exact; bad input is one sentence, exit 2, nothing written."""
from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparsity_jax.cli import main
from sparsity_jax.errors import UserError
from sparsity_jax.hf import load_pretrained
from sparsity_jax.hf.config import hf_config, same_math
from sparsity_jax.hf.run import export_run
from sparsity_jax.hf.weights import flat
from sparsity_jax.nn.model import ModelConfig
from tests.commands.test_bad_input import snapshot

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
LLAMA = FIXTURES / "llama_gqa_llama3"  # the fixture with a tokenizer.json
WORDS = "the quick brown fox jumps over lazy dog sparse activations in large language models relu silu".split()
SMALL = {"train.seq_len": "16", "train.global_batch_size": "8", "train.eval_batches": "1", "data.num_shards": "1",
         "data.val_permille": "500", "data.task": "text_files"}


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    for name in ("a", "b"):  # hash buckets 127 and 718: one validation, one train file at val_permille 500
        (d / f"{name}.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(30)))
    return [f"--config.{k}={v}" for k, v in {**SMALL, "data.text_glob": str(d / "*.txt")}.items()]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, text):
    run = tmp_path_factory.mktemp("imp") / "run"
    code, out, err = run_cli("import", "--hf", LLAMA, "--workdir", run, *text)
    assert code == 0, err
    return run


def test_import_writes_a_run_with_the_tokenizer(imported):
    assert (imported / "tokenizer" / "tokenizer.json").is_file() and (imported / "checkpoints" / "0").is_dir()
    cfg = json.loads((imported / "config.json").read_text())
    assert cfg["data"]["vocab"] == "hf" and cfg["data"]["tokenizer"] == "tokenizer/tokenizer.json"
    assert cfg["model"]["activation"] == "swiglu" and cfg["model"]["rope_scaling"] == "llama3"
    assert cfg["model"]["scan_layers"]  # imports scan their layers unless told otherwise


@pytest.fixture(scope="module")
def imported_unrolled(tmp_path_factory, text):
    run = tmp_path_factory.mktemp("imp_unrolled") / "run"
    code, out, err = run_cli("import", "--hf", LLAMA, "--workdir", run, "--config.model.scan_layers=False", *text)
    assert code == 0, err
    return run


def test_import_scans_unless_told_otherwise_with_the_same_logits(imported, imported_unrolled):
    """--config.model.scan_layers=False (the one model key import takes) saves per-layer blocks;
    both runs give the same logits (1e-6 of scale)."""
    from flax import nnx

    from sparsity_jax.runtime.block_stacking import blocks_stacked
    from sparsity_jax.runtime.checkpoint import Checkpointer
    from sparsity_jax.nn.model import LM

    logits = {}
    for run, scan in ((imported, True), (imported_unrolled, False)):
        saved = json.loads((run / "config.json").read_text())["model"]
        assert saved["scan_layers"] is scan
        ckpt = Checkpointer(run, read_only=True)
        params = ckpt.manager.restore(0, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
        ckpt.close()
        assert blocks_stacked(params) is scan
        cfg = ModelConfig(**saved)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
        if not scan:
            params = {**params, "blocks": {int(k): v for k, v in params["blocks"].items()}}
        nnx.replace_by_pure_dict(state, params)
        tokens = np.load(LLAMA / "reference.npz")["tokens"]
        logits[scan] = np.asarray(nnx.jit(lambda m, t: m(t))(nnx.merge(graphdef, state), tokens))
    assert np.abs(logits[True] - logits[False]).max() <= 1e-6 * np.abs(logits[False]).max()


def test_evaluation_commands_run_on_an_imported_model(imported):
    code, out, err = run_cli("cett", "--workdir", imported, "--cett", "0.2")
    assert code == 0, err
    cett = json.loads((imported / "cett.json").read_text())
    assert len(cett["threshold"]) == 2 and all(abs(c - 0.2) < 0.01 for c in cett["realised_cett"])
    code, out, err = run_cli("ppl", "--workdir", imported, "--ppl-p", "1", "--topk", "8", "--fat-eps", "0.1")
    assert code == 0, err
    assert (imported / "report" / "ppl.json").is_file()
    code, out, err = run_cli("predictor", "--workdir", imported, "--cett", "0.2", "--steps", "2", "--train-batches",
                             "1", "--batch-tokens", "32", "--topk", "8")
    assert code == 0, err
    code, out, err = run_cli("affinity", "--workdir", imported, "--cett", "0.2", "--windows", "1,4")
    assert code == 0, err
    code, out, err = run_cli("generate", "--workdir", imported, "--prompt", "the quick", "--max-new", "3", "--ffn",
                             "threshold", "--cett", "0.2")
    assert code == 0 and out.count("--- row ") == 1 and "the quick" in out, err + out


def test_import_export_import_is_exact(imported, tmp_path):
    code, _, err = run_cli("export", "--workdir", imported, "--hf", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    for name in ("qwen2_bias", "qwen3_qknorm", "gemma", "gemma3_text", "minicpm", "llama_relu_tied_linear",
                 "mistral_window"):
        model, cfg = load_pretrained(FIXTURES / name)
        from flax import nnx

        export_run(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg, tmp_path / name, log=lambda m: None)
    others = ("qwen2_bias", "qwen3_qknorm", "gemma", "gemma3_text", "minicpm", "llama_relu_tied_linear",
              "mistral_window")
    for name, src in [("out", LLAMA)] + [(n, FIXTURES / n) for n in others]:
        a, cfg_a = load_pretrained(src)
        b, cfg_b = load_pretrained(tmp_path / name)
        assert cfg_a == cfg_b, name
        from flax import nnx

        pa = dict(flat(nnx.to_pure_dict(nnx.state(a, nnx.Param))))
        pb = dict(flat(nnx.to_pure_dict(nnx.state(b, nnx.Param))))
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]), err_msg=f"{name} {k}")


def test_export_refuses_a_non_gated_ffn():
    with pytest.raises(UserError, match="no stock class"):
        hf_config(ModelConfig(activation="relu2"), "float32")
    assert same_math(ModelConfig(dtype="bfloat16", param_dtype="bfloat16"), ModelConfig())
    assert same_math(ModelConfig(scan_layers=True, remat="full"), ModelConfig())
    assert not same_math(ModelConfig(activation="reglu"), ModelConfig())


def _bad_dir(tmp_path, edit_config=None, edit_weights=None, src: Path = LLAMA) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(src, d)
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    if edit_weights:
        from safetensors.numpy import load_file, save_file

        w = load_file(str(d / "model.safetensors"))
        edit_weights(w)
        save_file(w, str(d / "model.safetensors"))
    return d


BAD_HF = [
    ("no config", lambda d: (d / "config.json").unlink(), None, "has no config.json"),
    ("model_type", lambda c: c.update(model_type="gpt2"), None, "model_type 'gpt2' in config.json is not supported"),
    ("hidden_act", lambda c: c.update(hidden_act="mish"), None, "hidden_act 'mish' in config.json is not supported"),
    ("rope", lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 2.0}), None, "rope type 'yarn'"),
    ("softcap", lambda c: c.update(final_logit_softcapping=30.0), None, "final_logit_softcapping"),
    ("missing", None, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"),
     "tensor 'model.layers.1.mlp.up_proj.weight' is missing"),
    ("shape", None, lambda w: w.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}),
     "tensor 'model.layers.0.self_attn.k_proj.weight' in model.safetensors has shape (8, 32)"),
    # every problem in one message (as bonsai collects them); RoPE's inv_freq buffer is no problem
    ("several", None, lambda w: (w.pop("model.layers.1.mlp.up_proj.weight"), w.update({
        "model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32),
        "model.layers.0.mlp.extra_proj.weight": np.zeros((4, 4), np.float32),
        "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros((4,), np.float32)})),
     ("(3 problems): ", "tensor 'model.layers.1.mlp.up_proj.weight' is missing",
      "tensor 'model.layers.0.self_attn.k_proj.weight' in model.safetensors has shape (8, 32), but config.json "
      "implies (16, 32)", "tensor 'model.layers.0.mlp.extra_proj.weight' is not part of the model")),
]


BAD_GEMMA3 = [
    ("softcap", lambda c: c.update(final_logit_softcapping=30.0), None, "final_logit_softcapping"),
    ("bidirectional", lambda c: c.update(use_bidirectional_attention=True), None, "use_bidirectional_attention"),
    ("local rope", lambda c: c["rope_parameters"]["sliding_attention"].update(rope_type="linear", factor=2.0), None,
     "scales the local layers' RoPE ('linear')"),
    ("layer types", lambda c: c.update(layer_types=["full_attention"] * 2), None, "lists 2 layer_types for 3 layers"),
    ("layer type", lambda c: c.update(layer_types=["chunked_attention"] * 3), None,
     "layer_types ['chunked_attention']"),
    ("post norm", None, lambda w: w.pop("model.layers.2.post_feedforward_layernorm.weight"),
     "tensor 'model.layers.2.post_feedforward_layernorm.weight' is missing"),
]


@pytest.mark.parametrize("what,config,tensors,message", BAD_GEMMA3, ids=[b[0] for b in BAD_GEMMA3])
def test_bad_gemma3_checkpoints_are_one_sentence_and_write_nothing(tmp_path, what, config, tensors, message):
    d = _bad_dir(tmp_path, config, tensors, src=FIXTURES / "gemma3_text")
    code, out, err = run_cli("import", "--hf", d, "--workdir", tmp_path / "run")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("what,config,tensors,message", BAD_HF, ids=[b[0] for b in BAD_HF])
def test_bad_checkpoints_are_one_sentence_and_write_nothing(tmp_path, what, config, tensors, message):
    if what == "no config":
        d = _bad_dir(tmp_path)
        config(d)
    else:
        d = _bad_dir(tmp_path, config, tensors)
    code, out, err = run_cli("import", "--hf", d, "--workdir", tmp_path / "run")
    messages = (message,) if isinstance(message, str) else message
    assert code == 2 and all(m in err for m in messages) and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_import_into_an_existing_run_and_init_from_another_shape(imported, tmp_path, text):
    before = snapshot(imported)
    code, _, err = run_cli("import", "--hf", LLAMA, "--workdir", imported)
    assert code == 2 and "already exists" in err and snapshot(imported) == before, err
    new = tmp_path / "other"
    code, _, err = run_cli("train", "--workdir", new, "--init-from", imported, "--config.model.d_ff=32", *text)
    assert code == 2 and "--init-from" in err and "same model shape" in err and err.count("\n") == 1, err
    assert not new.exists() or snapshot(new) == {}, snapshot(new)


def test_train_init_from_starts_from_the_imported_parameters(imported, tmp_path, text):
    """ReLU-fying the imported SwiGLU model: RUN's model with activation=reglu, its
    tokenizer; after one step at a negligible learning rate the parameters are still the
    imported ones (a fresh initialisation would be far from them)."""
    from sparsity_jax.runtime.checkpoint import Checkpointer

    new = tmp_path / "relu"
    code, _, err = run_cli("train", "--workdir", new, "--init-from", imported, "--config.model.activation=reglu",
                           "--config.train.steps=1", "--config.train.checkpoint_every=1", "--config.optimizer.lr=1e-12",
                           "--config.optimizer.weight_decay=0", "--config.train.metrics_every=0", *text)
    assert code == 0, err
    saved = json.loads((new / "config.json").read_text())
    assert saved["model"]["activation"] == "reglu" and saved["model"]["rope_scaling"] == "llama3"
    assert saved["data"]["tokenizer"] == str(imported / "tokenizer" / "tokenizer.json")
    ckpt = Checkpointer(new, read_only=True)
    trained = ckpt.manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
    ckpt.close()
    model, _ = load_pretrained(LLAMA)
    from flax import nnx

    ref = dict(flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    got = {tuple(int(k) if str(k).isdigit() else k for k in p): v for p, v in flat(trained)}
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), atol=1e-6, err_msg=str(k))


def test_the_tokenizer_vocabulary_follows_tokenizer_json_and_its_config(imported):
    from tokenizers import Tokenizer

    from sparsity_jax.data import get_vocabulary
    from sparsity_jax.settings import from_saved

    st = from_saved(json.loads((imported / "config.json").read_text()))
    vocab = get_vocabulary(st.data, cache_dir=str(imported))
    tok = Tokenizer.from_file(str(LLAMA / "tokenizer.json"))
    text = "the quick brown fox"
    assert list(vocab.encode(text)) == [1] + tok.encode(text, add_special_tokens=False).ids  # add_bos_token: <s> = 1
    assert vocab.eos_id == 2 and vocab.vocab_size == 96
    assert vocab.decode(vocab.encode(text)) == text
    import tensorflow as tf

    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == list(vocab.encode(text))


def test_import_refuses_model_overrides(tmp_path):
    code, _, err = run_cli("import", "--hf", LLAMA, "--workdir", tmp_path / "run", "--config.model.d_ff=8")
    assert code == 2 and "drop --config.model.d_ff" in err and not (tmp_path / "run").exists(), err


def test_init_from_restores_an_imported_model_into_stacked_blocks(imported_unrolled):
    """`train --init-from` with `model.scan_layers=True` from a per-layer run: the shapes
    are checked and the parameters restored in the stacked layout (runtime.block_stacking)."""
    import dataclasses

    import jax
    from flax import nnx

    from sparsity_jax.nn.model import LM
    from sparsity_jax.train.init_from import restore_params

    model, cfg = load_pretrained(LLAMA, scan_layers=False)
    scanned = dataclasses.replace(cfg, scan_layers=True)
    abstract = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: LM(scanned, rngs=nnx.Rngs(0))), nnx.Param)[1])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1), ("data",))
    one = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
    got = restore_params(imported_unrolled, abstract)
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))["blocks"]
    for name in ("w_in", "w_gate", "w_out"):
        np.testing.assert_array_equal(np.asarray(got["blocks"]["ffn"][name]),
                                      np.stack([np.asarray(want[i]["ffn"][name]) for i in range(cfg.num_layers)]))
    with pytest.raises(UserError, match="same model shape"):
        restore_params(imported_unrolled, {**abstract, "embed": jax.ShapeDtypeStruct((3, 3), np.float32, sharding=one)})

"""Tests of sparsity_jax.data: determinism, resume, multi-process split, packing,
splits, text files, vocabularies and user errors.

Kept fast: the local_code corpus is cut to a few files per split (data.max_files),
with short sequences, small batches and 4 virtual shards.
"""
import json
import os

import numpy as np
import pytest

from sparsity_jax import data
from sparsity_jax.data import sources, tasks
from sparsity_jax.errors import UserError
from sparsity_jax.settings import DataSettings, Settings

SEQ, BATCH = 64, 8


def small_cfg(**overrides):
    return DataSettings(**{**dict(max_files=12, num_shards=4, shuffle_buffer=64), **overrides})


def take(cfg, n, split="train", **kw):
    return list(data.get_batches(cfg, split=split, global_batch_size=BATCH,
                                 seq_len=SEQ, max_batches=n, **kw))


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def train5():
    return take(small_cfg(), 5)


def test_batch_keys_shapes_dtypes(train5):
    b = train5[0]
    assert sorted(b) == ["inputs", "loss_weights", "positions", "segment_ids", "targets"]
    for k, v in b.items():
        assert v.shape == (BATCH, SEQ), k
        assert v.dtype == (np.float32 if k == "loss_weights" else np.int32), k


def test_packing_is_right(train5):
    for b in train5:
        seg, pos, inp, tgt, w = (b[k] for k in ("segment_ids", "positions", "inputs",
                                                "targets", "loss_weights"))
        np.testing.assert_array_equal(w == 0, seg == 0)
        np.testing.assert_array_equal(tgt == 0, seg == 0)
        for r in range(BATCH):
            ids = seg[r][seg[r] > 0]
            assert ids.size and ids[0] == 1 and np.all(np.diff(ids) >= 0)
            assert np.all(seg[r][ids.size:] == 0)  # padding only at the end
            for s in np.unique(ids):
                where = np.flatnonzero(seg[r] == s)
                np.testing.assert_array_equal(pos[r][where], np.arange(where.size))
                assert inp[r][where[0]] == 0  # BOS (0) starts every segment
                np.testing.assert_array_equal(inp[r][where[1:]], tgt[r][where[:-1]])
    assert sum(float(b["loss_weights"].sum()) for b in train5) > 0.9 * 5 * BATCH * SEQ


def test_same_seed_same_batches_other_seed_differs(train5):
    assert_same(train5, take(small_cfg(), 5))
    other = take(small_cfg(seed=1), 1)[0]
    assert not np.array_equal(other["targets"], train5[0]["targets"])


def test_start_batch_resumes_exactly(train5):
    assert_same(take(small_cfg(), 2, start_batch=3), train5[3:5])


def test_processes_split_the_global_batch(train5):
    parts = [take(small_cfg(), 3, process_index=p, process_count=2) for p in range(2)]
    for p in parts:
        assert p[0]["inputs"].shape == (BATCH // 2, SEQ)
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
    assert_same(joined, train5[:3])


def test_validation_fixed_shape_padding_and_processes():
    cfg = small_cfg(max_files=3)
    val = list(data.get_batches(cfg, split="validation", global_batch_size=BATCH,
                                seq_len=SEQ))
    assert len(val) >= 2
    assert all(b["targets"].shape == (BATCH, SEQ) for b in val)
    last = val[-1]
    pad_rows = last["segment_ids"].max(axis=1) == 0
    assert np.all(last["loss_weights"][pad_rows] == 0)
    # process 1 of 2 gets the second half of the rows; max_batches beyond the data
    # yields exactly that many batches, the extra ones all padding
    second = list(data.get_batches(cfg, split="validation", global_batch_size=BATCH,
                                   seq_len=SEQ, process_index=1, process_count=2,
                                   max_batches=len(val) + 2))
    assert_same(second[:len(val)], [{k: v[BATCH // 2:] for k, v in b.items()}
                                    for b in val])
    assert all(not b["loss_weights"].any() for b in second[len(val):])


def test_local_code_split_disjoint_nonempty_and_stable():
    source = tasks.make_source(DataSettings())
    train, val = set(source.files("train")), set(source.files("validation"))
    assert train and val and not train & val
    assert 0.005 < len(val) / (len(train) + len(val)) < 0.05
    assert all("site-packages" not in p for p in train | val)
    root = sources.stdlib_root()
    for p in val:
        assert sources.hash_bucket(os.path.relpath(p, root)) < 20


def test_chunking_keeps_whole_documents():
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensors({"targets": tf.range(1, 12, dtype=tf.int32)})
    chunks = [c["targets"].tolist() for c in tasks.chunk_targets(
        ds, {"targets": 4}).as_numpy_iterator()]
    assert chunks == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]


@pytest.fixture()
def corpus(tmp_path):
    """300 jsonl lines (text in field "body") and 6 .txt files of random words."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(400)]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(300):
            text = " ".join(rng.choice(words, size=20))
            f.write(json.dumps({"body": f"doc {i}: {text}", "id": i}) + "\n")
    for i in range(6):
        (tmp_path / f"note{i}.txt").write_text(" ".join(rng.choice(words, 400)))
    return tmp_path


def test_text_files_jsonl_and_txt(corpus):
    cfg = small_cfg(task="text_files", text_glob=str(corpus / "*"), text_field="body",
                    max_files=0)
    batches = take(cfg, 2)
    assert batches[0]["targets"].shape == (BATCH, SEQ)
    text = bytes(np.clip(batches[0]["targets"][batches[0]["targets"] > 2] - 3, 0, 255)
                 .astype(np.uint8)).decode("utf-8", errors="replace")
    assert "doc " in text
    source = tasks.make_source(cfg)
    texts = {split: [x["text"] for x in source.get_dataset(split, shuffle=False)
                     .as_numpy_iterator()] for split in ("train", "validation")}
    assert texts["validation"] and not set(texts["train"]) & set(texts["validation"])
    assert len(texts["train"]) + len(texts["validation"]) == 300 + 6


def test_text_files_user_errors(corpus, tmp_path):
    with pytest.raises(UserError, match="matches no files"):
        data.get_task(small_cfg(task="text_files", text_glob=str(tmp_path / "*.none")))
    with pytest.raises(UserError, match="text_glob"):
        data.get_task(small_cfg(task="text_files"))
    with pytest.raises(UserError, match="data.text_field"):
        data.get_task(small_cfg(task="text_files", text_glob=str(corpus / "*.jsonl"),
                                text_field="missing"))


def test_tiny_train_split_is_a_user_error(tmp_path):
    (tmp_path / "one.txt").write_text("only a few words")
    cfg = small_cfg(task="text_files", text_glob=str(tmp_path / "*.txt"),
                    val_permille=0, num_shards=2)
    with pytest.raises(UserError, match="too small"):
        take(cfg, 1)


def test_bad_arguments_are_user_errors():
    # raised at the call, before any batch is asked for
    with pytest.raises(UserError, match="multiple of the process count"):
        data.get_batches(small_cfg(num_shards=4), split="train", global_batch_size=8,
                         seq_len=SEQ, process_count=3)
    with pytest.raises(UserError, match="multiple of\\s+data.num_shards"):
        data.get_batches(small_cfg(), split="train", global_batch_size=6, seq_len=SEQ)
    with pytest.raises(UserError, match="data.seed='zero' is a str"):
        Settings.from_dict({"data": {"seed": "zero"}})
    with pytest.raises(UserError, match="unknown config key 'config.data.colour'"):
        Settings.from_dict({"data": {"colour": "red"}})
    with pytest.raises(UserError, match="data.task='nope' is unknown"):
        data.resolve_config(DataSettings(task="nope"))
    with pytest.raises(UserError, match="sparsity_jax.settings.DataSettings"):
        data.resolve_config({"task": "local_code"})


def test_tensorflow_sees_no_accelerator():
    import tensorflow as tf
    assert not tf.config.get_visible_devices("GPU")


def test_vocab_sizes_and_tfds_tasks_register_offline():
    assert data.vocab_size(DataSettings()) == 259
    for name in ("c4_en", "lm1b"):
        task = data.get_task(small_cfg(task=name))
        assert task.name == name and "targets" in task.output_features


def test_sentencepiece_trains_once_into_cache_and_is_reused(corpus, tmp_path,
                                                            monkeypatch):
    cache = tmp_path / "cache"
    cfg = small_cfg(task="text_files", text_glob=str(corpus / "*"), text_field="body",
                    max_files=0, vocab="sentencepiece", spm_vocab_size=300)
    assert data.vocab_size(cfg, str(cache)) == 300
    model = tasks.spm_model_path(cfg, str(cache))
    assert os.path.dirname(model) == str(cache) and os.path.exists(model)
    assert os.path.basename(model).startswith("spm_text_files_")

    def fail(*args, **kwargs):
        raise AssertionError("retrained")
    monkeypatch.setattr(tasks, "_train_sentencepiece", fail)
    vocab = data.get_vocabulary(cfg, str(cache))
    text = "doc 7: zebra\n  Ünïcode 42"
    assert vocab.decode(vocab.encode(text)) == text
    batch = take(cfg, 1, cache_dir=str(cache))[0]
    assert batch["targets"].max() < 300 and batch["loss_weights"].sum() > 0

"""seqio tasks (local_code, text_files, c4_en, lm1b), vocabularies and the data config.

Every built-in task has one output feature, ``targets``, tokenized by bytes or a
SentencePiece model (`get_vocabulary`) and cut into chunks of at most ``seq_len``
tokens (`get_task`, `chunk_targets`); shuffling and packing happen in ``pipeline.py``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os

import seqio
import sentencepiece as spm
import tensorflow as tf

from sparsity_jax.data import sources
from sparsity_jax.data.hf_vocab import hf_vocabulary, tokenizer_path
from sparsity_jax.errors import UserError
from sparsity_jax.settings import BUILTIN_TASKS, DataSettings, user_cache_dir
# tfds name, text field and the tfds split serving as validation (lm1b has no
# validation split; its held-out set is "test").
_TFDS = {"c4_en": ("c4/en:3.1.0", "text", "validation"),
         "lm1b": ("lm1b:1.1.0", "text", "test")}
SPM_SAMPLE_BYTES = 8 << 20  # SentencePiece trains on the first 8 MB of train text


def resolve_config(data: DataSettings | None = None) -> DataSettings:
    """`data` (None: the defaults), checked: its fields (`DataSettings.check`) and that a
    task outside the built-in ones is registered in seqio."""
    data = DataSettings() if data is None else data
    if not isinstance(data, DataSettings):
        raise UserError("Pass the data settings as sparsity_jax.settings.DataSettings (e.g. Settings.data).")
    data.check()
    if data.task not in BUILTIN_TASKS and data.task not in seqio.TaskRegistry.names():
        raise UserError(f"data.task={data.task!r} is unknown; set it to one of "
                        f"{', '.join(BUILTIN_TASKS)} or a registered seqio task.")
    return data


def check_prepared(data: DataSettings) -> None:
    """UserError unless a TFDS task's dataset is prepared where `data.tfds_data_dir` says."""
    if data.task not in _TFDS:
        return
    import tensorflow_datasets as tfds  # local: its start-up (seconds), only for the tfds tasks

    name = _TFDS[data.task][0]
    if not tfds.builder(name, data_dir=data.tfds_data_dir or None).is_prepared():
        where = data.tfds_data_dir or "the TFDS default data directory"
        raise UserError(f"TFDS dataset {name} is not prepared in {where}; prepare it (tfds build {name.split(':')[0]}) "
                        "or point data.tfds_data_dir at a prepared copy.")


def _fingerprint(*parts) -> str:
    return hashlib.md5(json.dumps(parts).encode()).hexdigest()[:8]


def _source_params(cfg) -> tuple:
    """The config values that define the task's examples and split."""
    if cfg.task == "local_code":
        return (int(cfg.max_files), int(cfg.val_permille))
    if cfg.task == "text_files":
        pattern = os.path.abspath(os.path.expanduser(cfg.text_glob)) if cfg.text_glob \
            else ""
        return (pattern, cfg.text_field, int(cfg.max_files), int(cfg.val_permille))
    return (cfg.tfds_data_dir,)


def source_name(cfg) -> str:
    """Task name of the source: the task, plus a hash of non-default source params."""
    params = _source_params(cfg)
    if cfg.task != "text_files" and params == _source_params(DataSettings(task=cfg.task)):
        return cfg.task
    return f"{cfg.task}_{_fingerprint(*params)}"


@functools.lru_cache(maxsize=None)
def _make_source(task: str, params: tuple) -> seqio.DataSource:
    """Builds (once per task and params) the seqio source of a built-in task."""
    if task in _TFDS:
        name, _, val_split = _TFDS[task]
        return seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=params[0] or None,
                                    splits={"train": "train", "validation": val_split})
    if task == "local_code":
        max_files, val_permille = params
        root, paths = sources.stdlib_root(), sources.stdlib_python_files()
        if not paths:
            raise UserError(f"the standard library at {root} has no .py files; use "
                            "data.task=text_files with data.text_glob instead.")
        return sources.LocalTextSource(paths, root=root, val_permille=val_permille,
                                       max_files=max_files)
    pattern, field, max_files, val_permille = params
    paths = sources.glob_text_files(pattern)
    return sources.LocalTextSource(paths, root=sources.corpus_root(paths),
                                   val_permille=val_permille, max_files=max_files,
                                   jsonl_field=field)


def make_source(data_cfg) -> seqio.DataSource:
    """The seqio data source (``{"text": string}`` examples) of a built-in task."""
    cfg = resolve_config(data_cfg)
    return _make_source(cfg.task, _source_params(cfg))


def chunk_targets(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    """Cuts each tokenized ``targets`` into consecutive chunks of ≤ seq_len tokens.

    ``{"targets": [t0 .. t(n-1)]}`` becomes ceil(n / L) examples; only the last one
    ends with the document's EOS. Without a sequence length the data passes through.
    """
    if not sequence_length or not sequence_length.get("targets"):
        return dataset
    length = int(sequence_length["targets"])

    def chunks(example):
        tokens = example["targets"]
        n = tf.size(tokens)
        num = (n + length - 1) // length
        rows = tf.reshape(tf.pad(tokens, [[0, num * length - n]]), [num, length])
        sizes = tf.minimum(length, n - tf.range(num) * length)
        return tf.data.Dataset.from_tensor_slices((rows, sizes)).map(
            lambda row, size: {"targets": row[:size]})

    return dataset.flat_map(chunks)


def _train_sentencepiece(source: seqio.DataSource, path: str, vocab_size: int) -> None:
    """Trains a SentencePiece model on the first SPM_SAMPLE_BYTES of train text.

    T5 id convention (pad 0, eos 1, unk 2, no bos) as seqio expects; byte fallback
    and identity normalization so code (newlines, indentation) round-trips. Written
    atomically (temporary file, then rename).
    """
    def lines():
        total = 0
        for example in source.get_dataset("train", shuffle=False).as_numpy_iterator():
            for line in example["text"].decode("utf-8", errors="replace").split("\n"):
                if line.strip():
                    total += len(line)
                    yield line
            if total >= SPM_SAMPLE_BYTES:
                return

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            split_digits=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        raise UserError(f"SentencePiece training failed ({str(e).strip()}); lower "
                        "data.spm_vocab_size or use a larger corpus.") from None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, path)


def spm_model_path(data_cfg, cache_dir: str | None = None) -> str:
    """Where the SentencePiece model of `data_cfg` lives (given or cached)."""
    cfg = resolve_config(data_cfg)
    if cfg.spm_path:
        return os.path.expanduser(cfg.spm_path)
    return os.path.join(cache_dir or user_cache_dir(),
                        f"spm_{source_name(cfg)}_{int(cfg.spm_vocab_size)}.model")


def _vocab_key(cfg, cache_dir: str | None = None) -> str:
    if cfg.vocab == "byte":
        return "byte"
    if cfg.vocab == "hf":
        return f"hf_{_fingerprint(tokenizer_path(cfg.tokenizer, cache_dir))}"
    return f"spm_{_fingerprint(cfg.spm_path)}" if cfg.spm_path else \
        f"spm{int(cfg.spm_vocab_size)}"


def get_vocabulary(data_cfg, cache_dir: str | None = None) -> seqio.Vocabulary:
    """The vocabulary of `data_cfg`: bytes, a given SentencePiece model or one trained
    (and cached at ``<cache_dir>/spm_<task>_<vocab_size>.model``) from the train split.
    """
    cfg = resolve_config(data_cfg)
    if cfg.task not in BUILTIN_TASKS:
        return seqio.TaskRegistry.get(cfg.task).output_features["targets"].vocabulary
    if cfg.vocab == "byte":
        return seqio.ByteVocabulary()
    if cfg.vocab == "hf":
        return hf_vocabulary(cfg.tokenizer, cache_dir)
    path = spm_model_path(cfg, cache_dir)
    if not os.path.exists(path):
        if cfg.spm_path:
            raise UserError(f"data.spm_path {path!r} does not exist; point it at a "
                            "SentencePiece .model file or leave it empty to train one.")
        _train_sentencepiece(make_source(cfg), path, int(cfg.spm_vocab_size))
    return seqio.SentencePieceVocabulary(path)


def get_task(data_cfg, cache_dir: str | None = None) -> seqio.Task:
    """The seqio task of `data_cfg`, registered on first use (idempotent).

    Every built-in task has one output feature, ``targets``, and the preprocessing chain
    ``rekey(text → targets) → tokenize → append EOS → chunk_targets``: EOS marks the end
    of a document, then each document is cut into consecutive chunks of at most
    ``seq_len`` tokens, so that packing keeps the whole corpus instead of truncating
    every long document to its first ``seq_len`` tokens. Shuffling
    (``data.shuffle_buffer``, seeded) and packing happen in ``pipeline.py``.

    Tasks are registered once in ``seqio.TaskRegistry`` under a name derived from the
    config, e.g. ``local_code`` (defaults), ``local_code_1a2b3c4d`` (non-default source
    settings), ``text_files_<hash of glob and field>``, with ``_spm<size>`` or
    ``_spm_<hash of path>`` appended for SentencePiece vocabularies. ``data.task`` may
    also name any task already in ``seqio.TaskRegistry`` that has a ``targets``
    feature; it is then used as is (its own vocabulary and preprocessors).
    """
    cfg = resolve_config(data_cfg)
    if cfg.task not in BUILTIN_TASKS:
        task = seqio.TaskRegistry.get(cfg.task)
        if "targets" not in task.output_features:
            raise UserError(f"seqio task {cfg.task!r} has no 'targets' feature; give "
                            "data.task a language-modelling task.")
        return task
    name = source_name(cfg)
    if cfg.vocab != "byte":
        name = f"{name}_{_vocab_key(cfg, cache_dir)}"
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    source = make_source(cfg)
    field = _TFDS[cfg.task][1] if cfg.task in _TFDS else "text"
    vocab = get_vocabulary(cfg, cache_dir)
    return seqio.TaskRegistry.add(
        name, source=source,
        output_features={"targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)},
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": field}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
            chunk_targets,
        ],
        shuffle_buffer_size=int(cfg.shuffle_buffer))

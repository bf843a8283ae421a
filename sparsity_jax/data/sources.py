"""Local corpora as seqio data sources, with a deterministic train/validation split.

Two local corpora need no network: ``local_code`` (the running interpreter's standard
library ``*.py`` files) and ``text_files`` (the files a glob matches). The split is a
hash rule, so it never depends on the machine, the file order or the process count;
`LocalTextSource` states it, and its `get_dataset` the sharding.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from sparsity_jax.errors import UserError

SPLITS = ("train", "validation")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_HASH_KEY = [0x5EED, 0xC0DE]  # fixed SipHash key of the jsonl line split


def hash_bucket(key: str) -> int:
    """The split bucket in [0, 1000) of `key`: md5 → first 8 hex digits → int mod 1000."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % 1000


def stdlib_root() -> str:
    """The directory of the running interpreter's standard library
    (``sysconfig.get_paths()["stdlib"]``)."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_python_files() -> list[str]:
    """Sorted absolute paths of the stdlib's ``*.py`` files (no site-packages): the
    ``local_code`` corpus, one example = one file's text."""
    paths = []
    for directory, dirs, files in os.walk(stdlib_root()):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        paths.extend(os.path.join(directory, f) for f in files if f.endswith(".py"))
    return sorted(paths)


def glob_text_files(pattern: str) -> list[str]:
    """Sorted files matching `pattern` (``**`` allowed); UserError when there are none."""
    if not pattern:
        raise UserError("task text_files needs a file glob; set data.text_glob, "
                        "e.g. '/data/corpus/*.jsonl'.")
    paths = sorted(os.path.abspath(p)
                   for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
    if not paths:
        raise UserError(f"data.text_glob {pattern!r} matches no files; point it at "
                        "existing .txt or .jsonl files.")
    kinds = {os.path.splitext(p)[1] for p in paths} - {".txt", ".jsonl"}
    if kinds:
        raise UserError(f"data.text_glob {pattern!r} matches {sorted(kinds)} files; "
                        "make it match only .txt and .jsonl files.")
    return paths


def corpus_root(paths: Sequence[str]) -> str:
    """The directory that split keys are relative to: the files' common directory."""
    absolute = [os.path.abspath(p) for p in paths]
    if len(absolute) == 1:
        return os.path.dirname(absolute[0])
    return os.path.commonpath(absolute)


def _is_jsonl(path: str) -> bool:
    return path.endswith(".jsonl")


def _check_jsonl(path: str, field: str) -> None:
    """UserError naming the line when any non-blank line of `path` is not a JSON object
    with a string `field` (every line is read: a bad line deep in a big file would
    otherwise stop a run hours in)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number} is not JSON ({e}); fix that line, or rename the file "
                                "to .txt if it is plain text.") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                keys = sorted(record) if isinstance(record, dict) else []
                raise UserError(f"{path} line {number} has no string field {field!r}; set data.text_field "
                                f"to one of {keys} or fix that line.")


def _jsonl_text(line: bytes, field: str) -> bytes:
    """The `field` of one JSON line, utf-8 encoded (b"" for blank lines)."""
    if not line.strip():
        return b""
    return json.loads(line.decode("utf-8", errors="replace"))[field].encode("utf-8")


class LocalTextSource(seqio.DataSource):
    """Local files as a seqio source of ``{"text": tf.string}`` examples.

    A ``.jsonl`` file gives one example per line (its string field ``data.text_field``),
    any other file (``.txt``) one example.

    The split is a hash rule, so it never depends on the machine, the file order or the
    process count. A whole-file example goes to ``validation`` when
    ``int(md5(path relative to the corpus root).hexdigest()[:8], 16) % 1000 <
    val_permille`` (`hash_bucket`), else to ``train``; the root is the stdlib root, or
    the common directory of the matched files (`corpus_root`). A ``.jsonl`` line is
    split by the same rule on the key ``"<relative path>:<line number>"``, hashed in the
    pipeline with ``tf.strings.to_hash_bucket_strong`` (one rule for one jsonl file or
    many, so a single big jsonl file still yields both splits).

    Args:
      paths: the corpus files (``.jsonl`` → one example per line, else per file).
      root: the directory split keys are relative to.
      val_permille: validation share, in 1/1000.
      max_files: > 0 keeps only the first `max_files` (sorted) files of EACH split, a
        knob to make tests and smoke runs fast while both splits stay non-empty.
      jsonl_field: the JSON field holding the text of a ``.jsonl`` line.
    Empty texts are dropped. Files are read as bytes; the vocabularies decode invalid
    utf-8 with replacement.
    """

    fixed_order_shuffle = True  # validation with shuffle=True: one file order per seed, every iterator

    def __init__(self, paths: Sequence[str], *, root: str, val_permille: int = 20,
                 max_files: int = 0, jsonl_field: str = "text"):
        self._root, self._field, self._val_permille = root, jsonl_field, val_permille
        self._files: dict[str, list[str]] = {s: [] for s in SPLITS}
        for p in sorted(paths):
            if _is_jsonl(p):
                _check_jsonl(p, jsonl_field)
                for split in SPLITS:  # split line by line
                    self._files[split].append(p)
            else:
                val = hash_bucket(self._relative(p)) < val_permille
                self._files["validation" if val else "train"].append(p)
        if max_files > 0:
            self._files = {s: v[:max_files] for s, v in self._files.items()}
        super().__init__(splits=SPLITS, caching_permitted=False)

    def _relative(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), self._root)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return self._files[split]

    def files(self, split: str) -> list[str]:
        """The sorted files that `split` reads."""
        return list(self._files[split])

    def _jsonl_lines(self, path: tf.Tensor, rel: tf.Tensor, split: str
                     ) -> tf.data.Dataset:
        """Texts of the lines of jsonl file `path` (split key prefix `rel`) in `split`."""
        def in_split(i, _):
            key = tf.strings.join([rel, ":", tf.strings.as_string(i)])
            is_val = tf.strings.to_hash_bucket_strong(key, 1000, _HASH_KEY) < \
                self._val_permille
            return is_val if split == "validation" else tf.logical_not(is_val)

        def text(_, line):
            out = tf.numpy_function(lambda b: _jsonl_text(b, self._field), [line],
                                    tf.string, stateful=False)
            return tf.ensure_shape(out, [])

        return tf.data.TextLineDataset(path).enumerate().filter(in_split).map(text)

    def _examples(self, path: tf.Tensor, rel: tf.Tensor, jsonl: tf.Tensor, split: str
                  ) -> tf.data.Dataset:
        """The texts of one file: itself, or its jsonl lines that belong to `split`."""
        one = tf.data.Dataset.from_tensors(path)
        whole = one.filter(lambda _: tf.logical_not(jsonl)).map(tf.io.read_file)
        lines = one.filter(lambda _: jsonl).flat_map(
            lambda p: self._jsonl_lines(p, rel, split))
        return whole.concatenate(lines)

    def get_dataset(self, split: str = "train", shuffle: bool = True,
                    seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None,
                    use_cached: bool = False, num_epochs: int | None = 1
                    ) -> tf.data.Dataset:
        """Texts of `split` (of shard `shard_info`), file order shuffled if `shuffle`.

        Train: the file order is reshuffled at every pass (epoch) of a repeated dataset,
        deterministically given `seed`; validation: one order per `seed`. Sharding (``seqio.ShardInfo(s, S)``): with at
        least S files in the split, shard ``s`` reads files ``s, s+S, s+2S, ...`` of the
        sorted list; with fewer files every shard reads all of them and keeps the
        examples ``i`` with ``i % S == s``.
        """
        del sequence_length, use_cached, num_epochs
        paths = self._files[split]
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        shard_examples = len(paths) < count
        if not shard_examples:
            paths = paths[index::count]
        ds = tf.data.Dataset.from_tensor_slices((
            tf.constant(paths, tf.string),
            tf.constant([self._relative(p) for p in paths], tf.string),
            tf.constant([_is_jsonl(p) for p in paths], tf.bool)))
        if shuffle and len(paths) > 1:
            # train: a new order every epoch; validation: one fixed order per seed, the same for
            # every iterator (each virtual shard iterates the whole split)
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=split == "train")
        if not any(_is_jsonl(p) for p in paths):  # fast path: parallel whole-file reads
            ds = ds.map(lambda p, *_: tf.io.read_file(p),
                        num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = ds.flat_map(lambda p, rel, jsonl: self._examples(p, rel, jsonl, split))
        ds = ds.filter(lambda text: tf.strings.length(text) > 0)
        if shard_examples:
            ds = ds.shard(count, index)
        return ds.map(lambda text: {"text": text})

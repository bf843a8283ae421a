"""A pretrained model's own tokenizer as a seqio `Vocabulary` (data.vocab = "hf").

`data.tokenizer` names a Hugging Face `tokenizer.json` (run by the `tokenizers` library)
or a SentencePiece `tokenizer.model` (seqio's own SentencePieceVocabulary); a relative
path is resolved against the run's workdir (where `sparsity-jax import` copies it to
tokenizer/). BOS / EOS follow the tokenizer_config.json next to it: `bos_token`,
`eos_token`, and `add_bos_token` (when absent: whether the tokenizer's own
post-processor adds BOS). Text is encoded without the post-processor's other special
tokens; the pipeline appends EOS to every document as for the other vocabularies.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf

from sparsity_jax.errors import UserError


def tokenizer_path(spec: str, cache_dir: str | None) -> str:
    """`data.tokenizer` as a file path (relative: under `cache_dir`, the workdir)."""
    path = os.path.expanduser(spec)
    if not os.path.isabs(path) and cache_dir:
        path = os.path.join(cache_dir, path)
    if not os.path.isfile(path):
        raise UserError(f"data.tokenizer {path!r} does not exist; point it at a tokenizer.json or tokenizer.model.")
    return path


def _token(cfg: dict, key: str) -> str | None:
    value = cfg.get(key)
    return value.get("content") if isinstance(value, dict) else value


def _text(b) -> str:
    """A scalar string from tf.numpy_function: bytes, or a 0-d array of them (eager)."""
    b = b.item() if isinstance(b, np.ndarray) else b
    return b.decode("utf-8") if isinstance(b, bytes) else str(b)


class HFTokenizerVocabulary(seqio.Vocabulary):
    """A `tokenizer.json` (Hugging Face `tokenizers`) as a seqio vocabulary."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer  # local: only a pretrained model's tokenizer.json needs it

        self.path = path
        self.tok = Tokenizer.from_file(path)
        side = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        cfg = json.loads(open(side).read()) if os.path.isfile(side) else {}
        ids = {k: self.tok.token_to_id(t) if t else None
               for k, t in (("bos", _token(cfg, "bos_token")), ("eos", _token(cfg, "eos_token")),
                            ("unk", _token(cfg, "unk_token")))}
        self._bos, self._eos, self._unk = ids["bos"], ids["eos"], ids["unk"]
        if "add_bos_token" in cfg:
            self.add_bos = bool(cfg["add_bos_token"]) and self._bos is not None
        else:
            self.add_bos = self._bos is not None and self._bos in self.tok.encode("", add_special_tokens=True).ids
        super().__init__(extra_ids=0)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def unk_id(self) -> int | None:
        return self._unk

    @property
    def _base_vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        ids = self.tok.encode(s, add_special_tokens=False).ids
        return [self._bos] + ids if self.add_bos else ids

    def _decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        out = tf.numpy_function(lambda b: np.asarray(self._encode(_text(b)), np.int32), [s], tf.int32,
                                stateful=False)
        out.set_shape([None])
        return out

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        out = tf.numpy_function(lambda i: np.bytes_(self._decode(i.tolist()).encode("utf-8")), [ids], tf.string,
                                stateful=False)
        out.set_shape([])
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizerVocabulary) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def hf_vocabulary(spec: str, cache_dir: str | None) -> seqio.Vocabulary:
    """The vocabulary of `data.tokenizer`: a tokenizer.json or a SentencePiece .model."""
    path = tokenizer_path(spec, cache_dir)
    if path.endswith(".json"):
        return HFTokenizerVocabulary(path)
    return seqio.SentencePieceVocabulary(path)

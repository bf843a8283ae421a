"""The tokenizer a GGUF file's metadata describes, as the `tokenizer.json` +
`tokenizer_config.json` that `data/hf_vocab.py` reads (what an HF import copies).

`tokenizer.ggml.model` gpt2: byte-level BPE from `tokens` + `merges` (tokens outside the
byte alphabet respelled in it), split by GPT-2's regex or, for the Llama 3 family of
`tokenizer.ggml.pre`, by Llama 3's. `llama`: SentencePiece BPE with byte fallback, its
merges rebuilt from `scores` (best first). Tokens typed control become special tokens,
user-defined ones added tokens. A gemma3 file's `llama` vocabulary is Gemma's: spaces
normalized to ▁ (no prefix, no split), whitespace-only tokens respelled in ▁, merges
ranked by file order, `<unk>` for unknown pieces. This follows transformers' GGUF tokenizer conversion (the
reference the tests compare with); BOS / EOS / UNK ids and `add_bos_token` come from the
metadata (absent: BOS added for llama, not for gpt2, as llama.cpp and transformers do).
"""
from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from sparsity_jax.errors import UserError

CONTROL, USER_DEFINED = 3, 4
GPT2_PRE = ("default", "gpt2", "smollm")  # GPT-2's own split regex
LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character map of byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a token into two
    tokens, ranked by the whole token's score (best first; ties: longer left part)."""
    ids = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for token, score in dict(zip(tokens, scores)).items():
        pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ids and token[k:] in ids]
        ranked += [(score, a, b) for a, b in sorted(pairs, key=lambda p: (ids[p[0]], ids[p[1]]))]
    ranked.sort(key=lambda r: (r[0], len(r[1]), len(r[2])), reverse=True)
    return [(a, b) for _, a, b in ranked]


def _byte_level(meta: dict, file: str):
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GPT2_PRE + LLAMA3_PRE:
        raise UserError(f"{file} sets tokenizer.ggml.pre={pre!r}, whose split rule this importer does not know; "
                        f"supported: {', '.join(GPT2_PRE + LLAMA3_PRE)}.")
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", ())]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre in LLAMA3_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, spelled


def _sentencepiece(meta: dict):
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=spm_merges(tokens, scores),
                               fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    return tok, None


def _gemma(meta: dict):
    """Gemma's SentencePiece BPE (transformers' GemmaTokenizer as its GGUF loader builds it)."""
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in meta["tokenizer.ggml.tokens"]]
    unk = tokens[meta["tokenizer.ggml.unknown_token_id"]] if "tokenizer.ggml.unknown_token_id" in meta else "<unk>"
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=spm_merges(tokens, [-float(i) for i in range(len(tokens))]), fuse_unk=True,
                               unk_token=unk, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok, None, set(tokens)


def tokenizer_files(meta: dict, file: str) -> dict[str, bytes]:
    """{file name: contents} of the tokenizer a GGUF's metadata describes."""
    kind = meta.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama") or "tokenizer.ggml.tokens" not in meta:
        raise UserError(f"{file} describes a tokenizer of kind {kind!r}; this importer builds gpt2 (byte-level BPE) "
                        "and llama (SentencePiece) tokenizers from GGUF metadata.")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    known = set(tokens)
    if kind == "gpt2":
        tok, spelled = _byte_level(meta, file)
    elif meta.get("general.architecture") == "gemma3":
        tok, spelled, known = _gemma(meta)
    else:
        tok, spelled = _sentencepiece(meta)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
                            if k == CONTROL and (spelled is None or set(t) <= spelled)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types)
                    if k == USER_DEFINED and t in known])
    special = {name: tokens[meta[f"tokenizer.ggml.{key}_token_id"]]
               for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                                 ("pad_token", "padding")) if f"tokenizer.ggml.{key}_token_id" in meta}
    config = {**special, "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
              "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
              "tokenizer_class": "PreTrainedTokenizerFast"}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return {"tokenizer.json": tok.to_str().encode("utf-8"), "tokenizer_config.json": json.dumps(config, indent=1)
            .encode("utf-8")}

"""Your own text, evaluated whole: `--text FILE` on `import` and on the evaluation commands
makes all of FILE the validation split (no training split) and evaluates every token of
it; a text shorter than one batch is one sentence with both counts, exit 2."""
from __future__ import annotations

import json
import random
import subprocess

import pytest
from tokenizers import Tokenizer

from tests.hf.test_commands import LLAMA, WORDS, run_cli
from tests.train.test_cli import CLI

SMALL = {"train.global_batch_size": "8", "train.seq_len": "32"}  # one batch: 256 tokens


def tokens_of(path, tokenizer) -> int:
    """The text's tokens as the pipeline sees them, counted apart from it: BOS (this
    tokenizer's config adds it), the encoded text and the EOS that ends the document.
    (seqio takes id 0 for padding: the fixture's <unk>, e.g. a newline, would not count.)"""
    ids = tokenizer.encode(path.read_text(), add_special_tokens=False).ids
    assert 0 not in ids
    return 1 + len(ids) + 1


def write_text(path, lines: int, seed: int = 0):
    """`lines` sentences of 20 random words, one line (the fixture's vocabulary has no newline)."""
    rng = random.Random(seed)
    path.write_text(" ".join(" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(lines)))
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """An imported fixture whose evaluation text is `own.txt` (≈ 5 batches of 256 tokens)."""
    d = tmp_path_factory.mktemp("own")
    text = write_text(d / "own.txt", 40)
    run = d / "run"
    code, out, err = run_cli("import", "--hf", LLAMA, "--workdir", run, "--text", text,
                             *[f"--config.{k}={v}" for k, v in SMALL.items()])
    assert code == 0, err
    return run, text, Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))


def test_every_token_of_the_text_is_evaluated(imported):
    """`evaluate` runs as its own process, as a user runs it: twice in nine full runs, run in a test
    worker after many other tests, its first batches' 8-device all-reduce waited for a device
    that never came (XLA: "only 7 of them arrived", 620 s) while the main thread dispatched the
    metrics' jnp.add; fresh processes and 8-device programs built to provoke it never did."""
    run, text, tokenizer = imported
    want = tokens_of(text, tokenizer)
    assert want > 4 * 256  # several batches
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["val_permille"] == 1000 and saved["train"]["eval_batches"] == 0
    proc = subprocess.run(CLI + ["evaluate", "--workdir", str(run), "--ppl-p", "", "--output", str(run / "eval.json")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"validation: {want:,} real tokens in {-(-want // 256)} batches of 8 × 32" in proc.stdout, proc.stdout
    assert json.loads((run / "eval.json").read_text())["validation_tokens"] == want


def test_predictor_trains_on_the_text_when_it_is_all_validation(imported, tmp_path):
    run, _, tokenizer = imported
    other = write_text(tmp_path / "other.txt", 20, seed=1)  # --text on the command replaces the run's own
    code, out, err = run_cli("predictor", "--workdir", run, "--text", other, "--cett", "0.2", "--steps", "2",
                             "--train-batches", "1", "--batch-tokens", "32", "--topk", "8",
                             "--output-dir", tmp_path / "report")
    assert code == 0, err
    assert f"validation: {tokens_of(other, tokenizer):,} real tokens" in out
    assert "training batches of the evaluated text (no training split)" in out


def test_a_text_shorter_than_one_batch_is_one_sentence_with_both_counts(imported, tmp_path):
    run, _, tokenizer = imported
    short = write_text(tmp_path / "short.txt", 2)
    code, out, err = run_cli("cett", "--workdir", run, "--cett", "0.2", "--text", short,
                             "--output", tmp_path / "cett.json")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"has {tokens_of(short, tokenizer):,} tokens and one batch of 8 × 32 needs 256" in lines[0]
    assert not (tmp_path / "cett.json").exists()


def test_a_text_with_no_training_split_is_not_trained_on(tmp_path, imported):
    _, text, _ = imported
    code, out, err = run_cli("train", "--workdir", tmp_path / "t", "--config.data.task=text_files",
                             f"--config.data.text_glob={text}", "--config.data.val_permille=1000")
    assert code == 2 and "leaves nothing to train on" in err and not (tmp_path / "t").exists(), err


def test_a_text_glob_that_the_task_does_not_read_names_the_fix(imported):
    run, text, _ = imported
    code, out, err = run_cli("cett", "--workdir", run, "--cett", "0.2", "--config.data.task=local_code",
                             f"--config.data.text_glob={text}")
    assert code == 2 and "does not read it" in err and "--text FILE" in err, err

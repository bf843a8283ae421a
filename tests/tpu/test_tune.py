"""`train --dry-run --tune` for a TPU slice: every candidate is a full dry run, the chosen
one is the fastest estimated step among those that fit, its last line is the overrides to
paste, and a config nothing fits is one sentence with exit 2."""
import pytest

from sparsity_jax import settings
from sparsity_jax.errors import UserError
from sparsity_jax.methods import make_method
from sparsity_jax.train import tune as tn

SMALL = {"train.global_batch_size": "32", "train.seq_len": "256"}


def test_tune_picks_the_fastest_estimated_step_that_fits(capsys, monkeypatch):
    st = settings.load("configs/default.py", SMALL)
    tried, chosen = tn.tune(st, make_method, topology="v5p-8", remats=("none", "full"))
    # grad_accum 1 fits at once for both policies, so the larger accumulations are never compiled
    assert [(s.model.remat, s.train.grad_accum) for s, _ in tried] == [("none", 1), ("full", 1)]
    steps = [r.compiler_step_seconds for _, r in tried]
    assert all(s and s > 0 for s in steps) and chosen == min(range(2), key=steps.__getitem__)
    assert steps[1] > steps[0]  # full remat recomputes every block: the compiler's estimate is slower
    monkeypatch.setattr(tn, "tune", lambda *a, **k: (tried, chosen))  # the command prints these, no recompile
    assert tn.run_tune(st, make_method, "tiny", topology="v5p-8") == 0
    lines = [line.strip() for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[-1] == "--config.model.remat=none --config.train.grad_accum=1"
    assert "← chosen" in next(line for line in lines if line.startswith("none"))
    assert "(step s, tokens/s, MFU: compiler estimate)" in lines


def test_accumulations_keep_the_global_batch_divisible_over_the_data_parallel_devices():
    st = settings.load("configs/default.py", {"train.global_batch_size": "24"})
    assert tn.accumulations(st, 4) == [(1, 6), (2, 3), (3, 2), (6, 1)]


def test_nothing_fits_is_one_sentence(capsys):
    huge = {"train.global_batch_size": "2", "data.num_shards": "1", "train.seq_len": "128", "model.d_model": "8192", "model.d_ff": "32768",
            "model.num_layers": "2", "model.num_heads": "64", "mesh.data": "1"}
    st = settings.load("configs/default.py", huge)
    with pytest.raises(UserError, match="no remat policy and grad_accum fits 2 × 128 tokens in v5e's memory"):
        tn.run_tune(st, make_method, "huge", topology="v5litepod-1", remats=("full",))
    table = capsys.readouterr().out
    assert table.count("refused: out of memory") == 2  # grad_accum 1 and 2: each refused by the compiler

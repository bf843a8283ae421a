"""metrics.jsonl round trip (`MetricsWriter` → `read_metrics`) and comma-list parsing."""
import json

import numpy as np
import pytest

from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime import names
from sparsity_jax.runtime.logs import MetricsWriter, StepTimer, by_step, read_metrics


def test_read_metrics_keeps_last_record_per_step_and_skips_a_cut_last_line(tmp_path):
    w = MetricsWriter(str(tmp_path))
    for step, loss in ((10, 3.0), (20, 2.5), (30, 2.0)):
        w.write(step, {"loss": loss, "activation_ratio": np.arange(2.0)})
    w.write(20, {"loss": 2.4})  # a resumed run logs step 20 again
    w.write(20, {"perplexity": 9.0}, split="eval")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "split": "tr')  # the writer was killed mid-line
    got = read_metrics(str(tmp_path))
    assert [r["loss"] for r in by_step(got["train"])] == [3.0, 2.4, 2.0]
    assert got["train"][10]["activation_ratio"] == [0.0, 1.0] and got["eval"][20]["perplexity"] == 9.0
    MetricsWriter(str(tmp_path)).write(40, {"loss": 1.5})  # the resumed writer starts a new line
    assert [r["loss"] for r in by_step(read_metrics(str(tmp_path))["train"])] == [3.0, 2.4, 2.0, 1.5]


def test_read_metrics_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('garbage\n' + json.dumps({"step": 1, "split": "train"}) + "\n")
    with pytest.raises(UserError, match="line 1 is not a JSON record"):
        read_metrics(str(tmp_path))


def test_comma_list():
    assert comma_list(" 1, 5,,10 ", int, "--k") == [1, 5, 10]
    assert comma_list("0.5,0.75", float, "--drop-share") == [0.5, 0.75]
    assert comma_list("", float, "--drop-share", allow_empty=True) == []
    with pytest.raises(UserError, match="--k as comma-separated integers"):
        comma_list("1,two", int, "--k")
    with pytest.raises(UserError, match="at least one value for --ppl-p"):
        comma_list(" , ", float, "--ppl-p")


def test_step_timer_leaves_the_time_aside_out():
    """Fake clock: 4 steps of 2 s and 100 tokens each, with a 30 s evaluation and a 1 s
    metric write between them: 50 tokens/s and 2 s per step, not 400 / 39."""
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    for i in range(4):
        now[0] += 2.0
        timer.step(100)
        if i == 1:
            now[0] += 30.0
            timer.aside(30.0)
    now[0] += 1.0
    timer.aside(1.0)
    assert timer.rates() == {names.TOKENS_PER_SEC: 50.0, names.STEP_TIME: 2.0}
    timer.restart()
    now[0] += 3.0
    timer.step(60)
    assert timer.rates() == {names.TOKENS_PER_SEC: 20.0, names.STEP_TIME: 3.0}

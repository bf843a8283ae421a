"""bench/reproduce/common.py's pure helpers against hand examples: mean ± std and the
verdict rule that every reproduction script applies to its per-seed outcomes."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "reproduce_common", Path(__file__).resolve().parents[2] / "bench" / "reproduce" / "common.py")
C = sys.modules["reproduce_common"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(C)


def test_mean_std_sample_deviation():
    assert C.mean_std([1, 2, 3]) == (2.0, 1.0)                    # ddof = 1: sqrt((1 + 0 + 1) / 2)
    m, s = C.mean_std([0.5, 0.7])
    assert m == pytest.approx(0.6) and s == pytest.approx(math.sqrt(0.02))
    assert C.mean_std([4.2]) == (4.2, 0.0)
    with pytest.raises(ValueError):
        C.mean_std([])


def test_pm_formats_scaled_mean_and_std():
    assert C.pm([1, 2, 3]) == "2.000 ± 1.000"
    assert C.pm([0.1, 0.2, 0.3], digits=1, scale=100) == "20.0 ± 10.0"


def test_verdict_rule():
    assert C.verdict([True, True, True]) == "reproduces"
    # the regime is not reached: says so, with the reason, whatever the seeds say
    assert C.verdict([False, False, False], [True, True, True], regime=False, why="F < tokens") == \
        "does not at this scale: F < tokens"
    assert C.verdict([False] * 3, regime=False) == "does not at this scale"
    # regime reached and the opposite holds in every seed
    assert C.verdict([False, False, False], [True, True, True]) == "contradicts"
    # seeds disagree
    assert C.verdict([True, False, True], [False, True, False]) == "inconclusive (2 of 3 seeds)"
    assert C.verdict([False, False, False], [True, False, True]) == "inconclusive (0 of 3 seeds)"
    # every seed holding wins even outside the regime
    assert C.verdict([True, True, True], regime=False) == "reproduces"
    with pytest.raises(ValueError):
        C.verdict([])


def test_slope_and_table():
    assert C.slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    assert C.md_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"

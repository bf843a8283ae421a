"""The run report reads the results of the evaluation commands: cett.json and ppl.json with
the `target_cett` / `realised_cett` keys, and files written before them (a bare "cett")."""
import json

import pytest

from sparsity_jax.report.run_report import run_report

CETT_OLD = {"step": 2, "target_cett": 0.2, "threshold": [0.5, 0.25], "cett": [0.19, 0.18], "sparsity": [0.7, 0.6]}
PPL_OLD = {"search": [{"p": 1.0, "cett": 0.123, "cett_upper": 0.13, "ppl_ratio": 1.0099, "activation_ratio": 0.4,
                       "evaluations": 6}]}


def _new(old: dict, key: str) -> dict:
    return json.loads(json.dumps(old).replace('"cett"', f'"{key}"').replace('"cett_upper"', f'"{key}_upper"'))


@pytest.mark.parametrize("cett,ppl", [(CETT_OLD, PPL_OLD), (_new(CETT_OLD, "realised_cett"), _new(PPL_OLD, "target_cett"))],
                         ids=["old_keys", "new_keys"])
def test_sparsity_section_reads_both_vocabularies(tmp_path, cett, ppl):
    (tmp_path / "report").mkdir()
    (tmp_path / "cett.json").write_text(json.dumps(cett))
    (tmp_path / "report" / "ppl.json").write_text(json.dumps(ppl))
    sections, paths = run_report(tmp_path)
    s = next(s for s in sections if s.title.startswith("CETT"))
    assert s.missing is None
    assert s.tables[0][1] == [[1.0, 0.123, 1.0099, 0.4, 6]]  # p, CETT_p (the target), PPL ratio, ratio, evaluations
    assert s.tables[1][0] == ["layer", "threshold", "realised CETT", "sparsity"]
    assert s.tables[1][1] == [[0, 0.5, 0.19, 0.7], [1, 0.25, 0.18, 0.6]]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| 1 | 0.25 | 0.18 | 0.6 |" in md and paths[1].endswith("report.md")

"""Every path a run holds, in one place, through `etils.epath`: a workdir may be a local
directory or any path Orbax and epath accept (`gs://bucket/run`, an in-memory fsspec
filesystem in tests). Nothing below the commands calls `open()` or `os.path` on a
workdir path; JSON goes through `write_json` / `read_json`, figures through `save_figure`.

    <workdir>/config.json  metrics.jsonl  tensorboard/  summary.json  checkpoints/<step>/
              eval.json  cett.json  predictors/<name>/  tokenizer/
              report/  (index.html, report.md, ppl.json, ssd.json, *.png, ...)
"""
from __future__ import annotations

import io
import json
import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike | epath.Path


def as_path(path: PathLike) -> epath.Path:
    """An epath for `path`; a local path is made absolute (a remote one is kept as given)."""
    p = epath.Path(path)
    return p if is_remote(str(path)) else epath.Path(os.path.abspath(os.fspath(path)))


def is_remote(path: str) -> bool:
    """Whether `path` names a non-local filesystem (`scheme://...`)."""
    return "://" in str(path)


class Workdir:
    """The layout of one run's directory (nothing is created until written)."""

    def __init__(self, root: PathLike):
        self.root = as_path(root)

    def __str__(self) -> str:
        return os.fspath(self.root)

    def __fspath__(self) -> str:  # a Workdir is accepted wherever a path is (Workdir(Workdir(p)) == Workdir(p))
        return str(self)

    def __repr__(self) -> str:
        return f"Workdir({str(self)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return self.root.is_dir()

    # files of the run
    config = property(lambda self: self.root / "config.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    tensorboard = property(lambda self: self.root / "tensorboard")
    summary = property(lambda self: self.root / "summary.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    eval_json = property(lambda self: self.root / "eval.json")
    cett_json = property(lambda self: self.root / "cett.json")
    predictors = property(lambda self: self.root / "predictors")
    tokenizer = property(lambda self: self.root / "tokenizer")
    report = property(lambda self: self.root / "report")

    # files of its report directory (written by the evaluation commands and `report`)
    ppl_json = property(lambda self: self.report / "ppl.json")
    ssd_json = property(lambda self: self.report / "ssd.json")
    predictor_json = property(lambda self: self.report / "predictor.json")
    affinity_json = property(lambda self: self.report / "affinity.json")
    layer_patterns_json = property(lambda self: self.report / "layer_patterns.json")
    layer_patterns_md = property(lambda self: self.report / "layer_patterns.md")
    index_html = property(lambda self: self.report / "index.html")
    report_md = property(lambda self: self.report / "report.md")

    def report_file(self, name: str) -> epath.Path:
        """`report/<name>` (ppl.json, ssd.json, predictivity.json, figures, ...)."""
        return self.report / name

    def predictor(self, name: str) -> epath.Path:
        return self.predictors / name


def write_text(path: PathLike, text: str) -> epath.Path:
    """Writes `text` to `path` (parents created); returns the path."""
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def write_json(path: PathLike, obj: Any) -> epath.Path:
    return write_text(path, json.dumps(obj, indent=2))


def read_json(path: PathLike) -> Any:
    return json.loads(as_path(path).read_text())


def save_figure(fig, path: PathLike, dpi: int = 110, tight: bool = False) -> epath.Path:
    """Saves a matplotlib figure as PNG to any epath (rendered in memory, then written) and
    closes it; `tight`: `tight_layout()` first."""
    import matplotlib.pyplot as plt  # local: matplotlib's start-up, only where a figure is saved

    if tight:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(buf.getvalue())
    return p

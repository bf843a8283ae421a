"""Metrics logging: `metrics.jsonl` + TensorBoard events (names in `train/names.py`),
process 0 only; the one reader of metrics.jsonl; the progress line."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from sparsity_jax.train import names


def _plain(v: Any):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _end_line(path: str) -> None:
    """Ends a last line cut short by a killed writer, so appended records start on their
    own line (`read_metrics` then skips just the cut one)."""
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def read_metrics(workdir: str) -> dict[str, dict[int, dict[str, Any]]]:
    """{split: {step: record}} of a workdir's metrics.jsonl, the last record of each step (a
    resumed run logs the steps since its checkpoint again), names as in `train/names.py`
    (older logs' names mapped by `names.canonical`). A line cut short by a killed
    writer is skipped (the last line, or a record without its closing brace that a
    resumed writer ended, see `_end_line`); any other unreadable line is a UserError."""
    from sparsity_jax.errors import UserError

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; pass the workdir of a training run")
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            cut = line.lstrip().startswith("{") and not line.rstrip().endswith("}")
            if i == len(lines) - 1 or cut:
                continue
            raise UserError(f"{path} line {i + 1} is not a JSON record; fix or remove that line") from None
        out.setdefault(rec.get("split", ""), {})[int(rec["step"])] = names.canonical(rec)
    return out


def by_step(records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of one split of `read_metrics`, sorted by step."""
    return [records[s] for s in sorted(records)]


class MetricsWriter:
    """Appends `{"step": s, "split": ..., **metrics}` lines to metrics.jsonl and TB scalars.

    Every key must be a quantity of its split in `train/names.py`. Array-valued metrics
    of shape (L,) are per-layer (TensorBoard: `split/name/layer_i`), dict-valued ones
    families (`split/name/key`). Only the process with `enabled=True` (process 0) writes.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            _end_line(self.path)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        for key in metrics:
            names.check(split, key)
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key in ("step", "split"):
                continue
            for tag, v in names.tb_scalars(split, key, value):
                self._tb.add_scalar(tag, v, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def progress_line(step: int, total: int, metrics: dict[str, Any]) -> str:
    """One line: step, loss, tokens/s, MFU and per-layer activation ratio."""
    parts = [f"step {step:>6d}/{total}", f"loss {float(metrics['loss']):.4f}"]
    if "tokens_per_sec" in metrics:
        parts.append(f"{metrics['tokens_per_sec']:,.0f} tok/s")
    if metrics.get("mfu") is not None:
        parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    if names.ACTIVATION_RATIO in metrics:
        ratios = " ".join(f"{r:.3f}" for r in np.asarray(metrics[names.ACTIVATION_RATIO]).ravel())
        parts.append(f"act ratio/layer [{ratios}]")
    return " | ".join(parts)


def log_print(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(msg, file=sys.stdout, flush=True)

"""Metrics logging: `metrics.jsonl` + TensorBoard events (names in `runtime/names.py`),
process 0 only, on any epath filesystem; the one reader of metrics.jsonl; the progress line
and its speed figures (`StepTimer`)."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.runtime import names
from sparsity_jax.runtime.workdir import PathLike, Workdir, as_path, is_remote


def _plain(v: Any):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


class RewrittenFile:
    """Append-only text or bytes file on a filesystem without appends (gs://, memory://):
    the whole content is kept and the file rewritten at most every `every_s` seconds and at
    `flush` / `close`. Also serves tensorboardX's event files for such paths."""

    def __init__(self, path, every_s: float = 10.0):
        self.path, self.every_s = path, every_s
        self.data = bytearray(path.read_bytes() if path.exists() else b"")
        self._last = 0.0

    def write(self, data) -> None:
        self.data += data.encode() if isinstance(data, str) else data
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(bytes(self.data))
        self._last = time.monotonic()

    def close(self) -> None:
        self.flush()


class _RewrittenFiles:
    """tensorboardX writer factory for epath schemes (registered per scheme)."""

    def open(self, path: str) -> RewrittenFile:
        return RewrittenFile(as_path(path))

    def directory_check(self, path: str) -> None:
        as_path(path).mkdir(parents=True, exist_ok=True)


def _tensorboard_writer(directory):
    """tensorboardX SummaryWriter for a local or any epath directory."""
    from tensorboardX import SummaryWriter, record_writer  # local: its protobuf start-up, only when training logs

    path = str(directory)
    if is_remote(path):
        record_writer.register_writer_factory(path.split(":")[0], _RewrittenFiles())
    return SummaryWriter(path)


def _end_line(path) -> None:
    """Ends a last line cut short by a killed writer, so appended records start on their
    own line (`read_metrics` then skips just the cut one)."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            if is_remote(str(path)):  # no appends there
                path.write_bytes(data + b"\n")
            else:
                with path.open("ab") as f:
                    f.write(b"\n")


def read_metrics(workdir: PathLike | Workdir) -> dict[str, dict[int, dict[str, Any]]]:
    """{split: {step: record}} of a workdir's metrics.jsonl, the last record of each step (a
    resumed run logs the steps since its checkpoint again), names as in `runtime/names.py`
    (older logs' names mapped by `names.canonical`). A line cut short by a killed
    writer is skipped (the last line, or a record without its closing brace that a
    resumed writer ended, see `_end_line`); any other unreadable line is a UserError."""
    path = _workdir(workdir).metrics
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the workdir of a training run")
    lines = [line for line in path.read_text().split("\n") if line.strip()]
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            cut = line.lstrip().startswith("{") and not line.rstrip().endswith("}")
            if i == len(lines) - 1 or cut:
                continue
            raise UserError(f"{path} line {i + 1} is not a JSON record; fix or remove that line") from None
        rec = names.canonical(rec)
        out.setdefault(rec.get("split", ""), {})[int(rec["step"])] = rec
    return out


def by_step(records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of one split of `read_metrics`, sorted by step."""
    return [records[s] for s in sorted(records)]


class MetricsWriter:
    """Appends `{"step": s, "split": ..., **metrics}` lines to metrics.jsonl and TB scalars.

    Every key must be a quantity of its split in `runtime/names.py`. Array-valued metrics
    of shape (L,) are per-layer (TensorBoard: `split/name/layer_i`), dict-valued ones
    families (`split/name/key`). Only the process with `enabled=True` (process 0) writes.
    """

    def __init__(self, workdir: PathLike | Workdir, enabled: bool = True):
        self.enabled = enabled
        wd = _workdir(workdir)
        self.path = wd.metrics
        self._tb = self._file = None
        if enabled:
            wd.root.mkdir(parents=True, exist_ok=True)
            _end_line(self.path)
            self._file = RewrittenFile(self.path) if is_remote(str(self.path)) else None
            self._tb = _tensorboard_writer(wd.tensorboard)

    def write(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        for key in metrics:
            names.check(split, key)
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
        else:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key in ("step", "split"):
                continue
            for tag, v in names.tb_scalars(split, key, value):
                self._tb.add_scalar(tag, v, step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _workdir(workdir: PathLike | Workdir) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


class StepTimer:
    """Tokens/s and seconds per step of the training steps since the last log line.

    The caller times the work between steps that is not training (evaluations, checkpoint
    saves, metric writes), after the steps in flight have finished, and hands it to
    `aside`: that time is left out. Tokens are real (loss-weighted) tokens; steps are
    counted, so padding does not stretch the step time. `clock`: seconds (a fake in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        """Starts the next interval now."""
        self._t0, self._aside, self.steps, self.tokens = self.clock(), 0.0, 0, 0.0

    def step(self, tokens: float) -> None:
        """Counts one finished step of `tokens` real tokens."""
        self.steps += 1
        self.tokens += tokens

    def aside(self, seconds: float) -> None:
        """Leaves `seconds` of non-training work out of this interval."""
        self._aside += seconds

    def rates(self) -> dict[str, float]:
        """{tokens_per_sec, step_time} of the interval so far."""
        dt = max(self.clock() - self._t0 - self._aside, 1e-9)
        return {names.TOKENS_PER_SEC: self.tokens / dt, names.STEP_TIME: dt / max(self.steps, 1)}


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

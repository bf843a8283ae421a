"""Where a command's wall time goes: named phases (dense pass, sparse evaluations, sweeps,
…) net of the compile time JAX reports inside them (tracing, lowering and XLA, through
`jax.monitoring`), printed by the evaluation commands as one `time:` line."""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Callable, Iterator

import jax

# the JAX events that make up "compile": tracing to a jaxpr, lowering to MLIR, XLA's compile
# (a persistent-cache hit skips the last; jax/_src/dispatch.py names them)
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class _CompileClock:
    """Seconds JAX spent compiling in this process so far (all threads)."""

    def __init__(self):
        self.seconds = 0.0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self.seconds += duration


_CLOCK: _CompileClock | None = None


def compile_seconds() -> float:
    """JAX's compile seconds in this process since the first call of this module's clock."""
    global _CLOCK
    if _CLOCK is None:
        _CLOCK = _CompileClock()
    return _CLOCK.seconds


class Timings:
    """Phase wall times net of compiling, plus the compile total, since `start`.

    The outermost open phase takes all the time inside it (the Pareto sweeps' sparse
    passes count as sweeps, not as sparse evaluations). The caller makes a phase's work
    finish before it ends (a host read of its result), as JAX dispatches asynchronously."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start()

    def start(self) -> None:
        compile_seconds()  # the listener must exist before the first compile to be timed
        self._t0, self._c0 = self.clock(), compile_seconds()
        self.net: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.current: str | None = None  # the open outermost phase

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.current is not None:
            yield
            return
        self.current, t0, c0 = name, self.clock(), compile_seconds()
        try:
            yield
        finally:
            net = self.clock() - t0 - (compile_seconds() - c0)
            self.net[name] = self.net.get(name, 0.0) + max(net, 0.0)
            self.calls[name] = self.calls.get(name, 0) + 1
            self.current = None

    def split(self) -> dict[str, float]:
        """{"compile": s, <phase>: s net of compile, …, "other": the rest (start-up, loading)}."""
        total = self.clock() - self._t0
        out = {"compile": compile_seconds() - self._c0, **self.net}
        out["other"] = max(total - sum(out.values()), 0.0)
        out["total"] = total
        return out

    def line(self) -> str:
        """`time: 41.2 s = compile 9.1 s + dense pass 6.0 s + sparse evaluations (7×) 20.3 s + … + start-up,
        loading and the rest 5.8 s` (the rest is `split()`'s "other")."""
        s = self.split()
        parts = [f"compile {s['compile']:.1f} s"]
        parts += [f"{k}{f' ({self.calls[k]}×)' if self.calls[k] > 1 else ''} {self.net[k]:.1f} s" for k in self.net]
        parts.append(f"start-up, loading and the rest {s['other']:.1f} s")
        return f"time: {s['total']:.1f} s = " + " + ".join(parts)


TIMINGS = Timings()  # the process's: the library's phases record here, the commands print it


def phase(name: str):
    """`with phase("dense pass"): …` records into the process's `TIMINGS`."""
    return TIMINGS.phase(name)


def timed(name: str):
    """Decorator: every call of the function is the phase `name` (`phase`)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return inner
    return wrap

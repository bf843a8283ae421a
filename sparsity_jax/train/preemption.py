"""Preemption: a SIGTERM on any process stops every process after the same step.

One process: our SIGTERM handler sets a flag (the previous handler is restored on close).
Several processes (`jax.distributed` initialised): JAX's preemption sync manager, whose
notifier catches SIGTERM on any host and agrees through the coordination service on
the next step every host reaches (`multihost_utils.reached_preemption_sync_point`);
no handler of ours replaces its notifier, and no device collective is added to a step.
"""
from __future__ import annotations

import signal

import jax
from jax._src import distributed
from jax.experimental import multihost_utils


def _sync_manager():
    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class Preemption:
    """Call `reached(step)` after every step (consecutive steps, the same on every host);
    True: save `step` and stop. Use as a context manager."""

    def __init__(self):
        self.multi = jax.process_count() > 1 and _sync_manager() is not None
        self.signal: int | None = None
        self._previous = None

    def __enter__(self) -> "Preemption":
        if not self.multi:
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if not self.multi:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum, frame) -> None:
        self.signal = signum

    def reached(self, step: int) -> bool:
        """Whether every process stops after `step`."""
        if self.multi:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.signal is not None

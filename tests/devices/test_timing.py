"""The commands' `time:` split (`devices.timing`) and the host memory that freed buffers
give back (`devices.memory.return_freed_memory`)."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsity_jax.devices.memory import return_freed_memory
from sparsity_jax.devices.timing import Timings, compile_seconds


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_outermost_phase_takes_the_time_inside_it():
    clock = FakeClock()
    tm = Timings(clock)
    with tm.phase("sweeps"):
        clock.t += 2.0
        with tm.phase("sparse evaluations"):  # inside the sweep: counted as the sweep's
            clock.t += 3.0
    with tm.phase("sparse evaluations"):
        clock.t += 1.5
    clock.t += 0.5  # outside every phase
    split = tm.split()
    assert split["sweeps"] == pytest.approx(5.0) and split["sparse evaluations"] == pytest.approx(1.5)
    assert split["total"] == pytest.approx(7.0) and split["other"] == pytest.approx(0.5 - split["compile"])
    assert tm.calls == {"sweeps": 1, "sparse evaluations": 1}
    assert tm.line().startswith("time: 7.0 s = compile ")


def test_compile_time_is_taken_out_of_the_phase():
    tm = Timings()
    before = compile_seconds()
    with tm.phase("dense pass"):
        f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 17.25)  # a program compiled here, once
        jax.block_until_ready(f(jnp.ones((64, 64))))
    compiled = compile_seconds() - before
    split = tm.split()
    assert compiled > 0 and split["compile"] == pytest.approx(compiled)
    assert split["dense pass"] + split["compile"] <= split["total"] + 1e-6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc/self/status are Linux's")
def test_freed_buffers_leave_the_resident_set():
    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    assert return_freed_memory()
    base, live = rss_mb(), []
    for _ in range(3):  # 30 × 16 MB allocated, touched and freed, three times
        chunks = [np.ones(4 << 20, np.float32) for _ in range(30)]
        live.append(np.ones(1000))  # a small buffer that outlives them: glibc's heap top stays pinned
        assert rss_mb() > base + 300
        del chunks
    # without return_freed_memory glibc keeps them: +480 MB on this machine
    assert rss_mb() < base + 64

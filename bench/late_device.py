"""One of 8 fake CPU devices reaches a psum 65 s after the others (the program of
tests/devices/test_host_collectives.py). At XLA's own limit (a warning at 20 s, the end 40 s
later: 60 s) XLA aborts the process; with the limit `sparsity_jax` sets on import (20 + 600 s)
it completes. Prints each case's exit code, wall time, last output line and XLA's fatal line.
Run: PYTHONPATH=. python bench/late_device.py"""
from __future__ import annotations

import time

from tests.devices.test_host_collectives import COLLECTIVE_WAIT_FLAG, run

DEVICES = "--xla_force_host_platform_device_count=8"
CASES = [("XLA's default limit (40 s, given explicitly), device 65 s late", f"{DEVICES} {COLLECTIVE_WAIT_FLAG}=40", 65),
         ("the library's limit (600 s), device 65 s late", DEVICES, 65)]

for name, flags, late in CASES:
    start = time.time()
    out = run(flags, late)
    fatal = [line for line in out.stderr.splitlines() if line.startswith("F")][-1:] or ["(no fatal line)"]
    print(f"{name}: exit code {out.returncode}, {time.time() - start:.1f} s; "
          f"{out.stdout.strip().splitlines()[-1]}; {fatal[0][:200]}", flush=True)

"""`hardware.patient_host_collectives`: XLA:CPU aborts a process whose fake devices reach a
collective more than its limit apart (fake devices on a loaded machine came 29 s apart); importing
`sparsity_jax` raises the limit, and a limit the user put in XLA_FLAGS is kept and honoured.
Each case runs in a fresh process, where one of 8 devices reaches a psum late; XLA aborts
after its warning (…warn_stuck_timeout_seconds, 20 s by default) plus the limit.
`bench/late_device.py` shows a device 65 s late abort at XLA's default and pass with the library."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from sparsity_jax.devices.hardware import COLLECTIVE_WAIT_FLAG

LATE_DEVICE = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import sparsity_jax  # noqa: F401  (sets the limit before JAX starts its CPU backend)
    print("XLA_FLAGS=" + os.environ["XLA_FLAGS"], flush=True)
    import jax, jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    def late(i):  # device 0 reaches the collective argv[1] seconds after the others
        if int(i) == 0:
            time.sleep(float(sys.argv[1]))
        return np.float32(0)

    def body(x):
        i = jax.lax.axis_index("d")
        wait = jax.pure_callback(late, jax.ShapeDtypeStruct((), jnp.float32), i)
        return jax.lax.psum(x.sum() + wait, "d")

    mesh = Mesh(jax.devices(), ("d",))
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P()))
    print("sum", float(f(jnp.arange(8.0))), flush=True)
""")


WARN_1S = "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_warn_stuck_timeout_seconds=1"


def run(xla_flags: str, late_seconds: float) -> subprocess.CompletedProcess:
    """LATE_DEVICE in a fresh process with these XLA_FLAGS (before `sparsity_jax` adds its own)."""
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the flags differ from the suite's: nothing to share
    return subprocess.run([sys.executable, "-c", LATE_DEVICE, str(late_seconds)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_late_device_waits_under_the_librarys_limit():
    out = run(WARN_1S, 3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{COLLECTIVE_WAIT_FLAG}=600" in out.stdout and "sum 28.0" in out.stdout, out.stdout


def test_the_users_limit_is_kept_and_a_later_device_aborts_the_process():
    """What the library guards against, at a 1 + 1 s limit the user chose: XLA ends the process."""
    out = run(f"{WARN_1S} {COLLECTIVE_WAIT_FLAG}=1", 3)
    assert out.returncode == -6, (out.returncode, out.stderr[-3000:])  # SIGABRT
    assert f"{COLLECTIVE_WAIT_FLAG}=1\n" in out.stdout and "=600" not in out.stdout, out.stdout
    assert "Termination timeout" in out.stderr and "of 1 seconds exceeded" in out.stderr, out.stderr[-3000:]


def test_a_jaxlib_that_may_not_know_the_flag_is_left_alone(monkeypatch):
    from sparsity_jax.devices import hardware

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setattr(hardware.importlib.metadata, "version", lambda name: {"jaxlib": "0.8.1"}[name])
    hardware.patient_host_collectives()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    monkeypatch.setattr(hardware.importlib.metadata, "version", lambda name: {"jaxlib": "0.10.2"}[name])
    hardware.patient_host_collectives(30)
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {COLLECTIVE_WAIT_FLAG}=30"

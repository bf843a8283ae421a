"""Test-wide set-up: CPU with 8 fake devices, so sharding and pmap paths run for real.

The environment variables must be set before JAX is imported anywhere, which is why
they live at the top of conftest.py.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

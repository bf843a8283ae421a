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


# The longest test files (minutes each: multi-process runs, `make demo`, resumes), longest
# first. `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: workers
# pull whole files in collection order, so starting with these keeps the run from ending
# on one of them while the other worker idles.
LONG_FILES = ("tests/train/test_preemption.py", "tests/commands/test_demo.py",
              "tests/commands/test_multiprocess_eval.py", "tests/train/test_cli.py", "tests/ssd/test_ssd_training.py",
              "tests/train/test_mesh.py", "tests/ssd/test_baselines.py", "tests/report/test_ssd_report.py",
              "tests/commands/test_bad_input.py")


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FILES)))  # stable: the rest keep order

"""Test-wide set-up: CPU with 8 fake devices, so sharding and pmap paths run for real.

The environment variables must be set before JAX is imported anywhere, which is why
they live at the top of conftest.py.
"""
import os
import shutil
import tempfile

# LLVM at -O0 without its expensive passes: the suite's tiny models spend far more time in
# XLA:CPU compilation than in running (tests/train/test_mesh.py + tests/nn/test_model.py:
# 104 s → 82 s on the 2-core CI machine); every comparison compiles both sides alike, and
# subprocesses inherit the flags. Set XLA_FLAGS with either option to choose otherwise.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS and "xla_llvm_disable_expensive_passes" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent XLA compilation cache per test run, shared by the xdist workers and every
# subprocess they start (the CLI, multi-process and fault tests compile the same tiny steps
# again in each new process). The controller creates it before it starts its workers (they
# inherit the variable) and removes it at the end, so a timing of `make test` is always a
# cold start; set JAX_COMPILATION_CACHE_DIR to keep one.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"sparsity_jax_xla_{os.getpid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# libtpu (the tpu extra, tests/tpu) must neither look for a TPU nor ask a metadata server;
# importing sparsity_jax also lets the 8 devices of a loaded machine reach a collective far
# apart without XLA aborting the worker (`patient_host_collectives`; subprocesses inherit it)
from sparsity_jax.devices.hardware import no_tpu_environment  # noqa: E402

no_tpu_environment()

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


def pytest_sessionfinish(session):
    """The run's own compilation cache goes when the run ends (the controller, after its workers)."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

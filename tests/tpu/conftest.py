"""The TPU compile checks: every hot path compiled by libtpu's TPU compiler for real TPU
slices on this CPU machine (no TPU attached). They run where libtpu is installed (`make
tpu-check` installs the `tpu` extra and runs them, as does .ci/run after the suite) and
are skipped with a reason elsewhere; `make test` leaves them to `make tpu-check`."""
import importlib.util

import pytest

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="libtpu is not installed: `make tpu-check` installs the tpu extra and runs these")
    for item in items:
        if "tests/tpu/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.tpu_compile)
            if not HAVE_LIBTPU:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_persistent_cache():
    """TPU executables compiled without a TPU cannot be read back from JAX's persistent
    cache: these compiles neither read nor write it."""
    import jax

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", before)


@pytest.fixture(scope="session")
def tpu():
    """topology name → its compile-only devices (each slice built once)."""
    from sparsity_jax.devices import hardware

    cache = {}

    def devices(name: str):
        if name not in cache:
            cache[name] = hardware.topology_devices(name)
        return cache[name]

    return devices

"""The accelerators this library plans for, in one place: each chip's memory and peak
FLOP/s, Cloud TPU slice names (`v5p-8`, `v5litepod-16`) next to libtpu's (`v5p:2x2x1`),
and the compile-only devices of a TPU topology, which libtpu gives on a machine with no
TPU attached (the dry run, `--tune` and the TPU compile checks compile for them).

libtpu looks for a TPU and asks a cloud metadata server when it loads; `no_tpu_environment`
tells it not to whenever no TPU is attached, and runs when `sparsity_jax` is imported, as does
`patient_host_collectives` (XLA:CPU's collectives wait for late fake devices, not abort).
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import importlib.util
import math
import os
import re

from sparsity_jax.errors import UserError

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip (one JAX device): `name` as on the command line."""

    name: str
    device_kinds: tuple[str, ...]  # prefixes of jax `Device.device_kind`
    hbm_bytes: int | None  # memory per device
    peak_flops: float  # dense bf16 FLOP/s per device (vendor figure), for MFU
    hbm_bandwidth: float  # bytes/s per device (vendor figure), for a roofline


CHIPS = (
    Chip("v4", ("TPU v4",), 32 * GIB, 275e12, 1228e9),
    Chip("v5e", ("TPU v5 lite", "TPU v5e"), 16 * GIB, 197e12, 819e9),
    Chip("v5p", ("TPU v5p", "TPU v5"), 95 * GIB, 459e12, 2765e9),
    Chip("v6e", ("TPU v6 lite", "TPU v6e"), 32 * GIB, 918e12, 1640e9),
    Chip("h100", ("NVIDIA H100",), 80 * GIB, 989e12, 3350e9),
    Chip("h200", ("NVIDIA H200",), 141 * GIB, 989e12, 4800e9),
    Chip("a100", ("NVIDIA A100",), None, 312e12, 2039e9),  # 40 or 80 GB: the device reports which
    Chip("l4", ("NVIDIA L4",), 24 * GIB, 121e12, 300e9),
)


def chip_named(name: str) -> Chip:
    """The chip called `name` (v4, v5e, v5p, v6e, h100, ...); UserError listing them."""
    for chip in CHIPS:
        if chip.name == name:
            return chip
    raise UserError(f"{name!r} is not one of the known chips {', '.join(c.name for c in CHIPS)}; pick one.")


def chip_of(device) -> Chip | None:
    """The chip of a JAX device by its device_kind (longest matching prefix), or None."""
    kind = device.device_kind
    found = [(len(p), c) for c in CHIPS for p in c.device_kinds if kind.startswith(p)]
    return max(found, key=lambda t: t[0])[1] if found else None


def peak_flops_per_device(device=None) -> float | None:
    """Peak dense bf16 FLOP/s of `device` (default: the first local one); None: unknown."""
    import jax  # jax initialises its backends here, after `no_tpu_environment` ran

    chip = chip_of(device or jax.devices()[0])
    return chip.peak_flops if chip else None


# ---- TPU topologies -------------------------------------------------------------------
# Cloud names: v4-N and v5p-N count TensorCores (two per chip, one "megacore" device);
# v5litepod-N (= v5e-N) and v6e-N count chips. A host holds 4 chips (2x2x1) in a
# multi-host slice; a v5e / v6e slice of at most 8 chips is one host.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_CLOUD = re.compile(r"^(v4|v5p|v5e|v5litepod|v6e)-(\d+)$")
_LIBTPU = re.compile(r"^(v4|v5p|v5|v5e|v6e):(\d+)x(\d+)(?:x(\d+))?$")
KNOWN_TOPOLOGIES = ("v4-8 … v4-4096", "v5p-8 … v5p-8192", "v5litepod-1/4/8 … 256 (= v5e-N)", "v6e-1/4/8 … 256",
                    "or libtpu's GEN:AxBxC such as v5p:2x2x1, v5e:4x4")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: its chip, libtpu's name for it and how its chips sit on hosts."""

    name: str  # as given
    chip: Chip
    shape: tuple[int, int, int]  # chips along x, y, z
    chips_per_host: tuple[int, int, int]

    @property
    def libtpu_name(self) -> str:
        dims = self.shape if self.chip.name in ("v4", "v5p") else self.shape[:2]
        return f"{self.chip.name}:{'x'.join(map(str, dims))}"

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host)

    @property
    def cloud_name(self) -> str:
        prefix = "v5litepod" if self.chip.name == "v5e" else self.chip.name
        return f"{prefix}-{self.chips * _CORES_PER_CHIP[self.chip.name]}"


def _shape_3d(chips: int) -> tuple[int, int, int] | None:
    """v4 / v5p: 2x2x1, 2x2x2, then each doubling grows z, y, x in turn (2x2x4, 2x4x4, 4x4x4, 4x4x8, ...)."""
    if chips < 4 or chips & (chips - 1):
        return None
    if chips == 4:
        return (2, 2, 1)
    shape, axis = [2, 2, 2], 2
    while math.prod(shape) < chips:
        shape[axis] *= 2
        axis = (axis - 1) % 3
    return tuple(shape)


def _shape_2d(chips: int) -> tuple[int, int, int] | None:
    """v5e / v6e: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16."""
    if chips not in (1, 4, 8, 16, 32, 64, 128, 256):
        return None
    side = math.isqrt(chips)
    if side * side == chips:
        return (side, side, 1)
    side = math.isqrt(chips // 2)
    return (side, 2 * side, 1)


def _hosts_bounds(chip: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if chip in ("v5e", "v6e") and math.prod(shape) <= 8:
        return shape
    return (min(2, shape[0]), min(2, shape[1]), 1)


def parse_topology(name: str) -> Topology:
    """A Cloud TPU name (`v5p-8`, `v5litepod-16`, `v4-32`, `v6e-8`) or libtpu's form
    (`v5p:2x2x1`, `v5e:4x4`); UserError listing the known forms."""
    shape = None
    if m := _CLOUD.match(name):
        chip = "v5e" if m[1] == "v5litepod" else m[1]
        count = int(m[2])
        if count % _CORES_PER_CHIP[chip] == 0:
            chips = count // _CORES_PER_CHIP[chip]
            shape = _shape_3d(chips) if chip in ("v4", "v5p") else _shape_2d(chips)
    elif m := _LIBTPU.match(name):
        chip = "v5p" if m[1] == "v5" else m[1]
        dims = tuple(int(d) for d in m.groups()[1:] if d is not None)
        if (len(dims) == 3) == (chip in ("v4", "v5p")) and all(d > 0 for d in dims):
            shape = tuple(dims) + (1,) * (3 - len(dims))
    if shape is None:
        raise UserError(f"--topology {name} is not a TPU slice this library knows; use one of "
                        f"{', '.join(KNOWN_TOPOLOGIES)}.")
    return Topology(name, chip_named(chip), shape, _hosts_bounds(chip, shape))


def tpu_attached() -> bool:
    """Whether this machine has TPU chips (the device files libtpu opens)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def no_tpu_environment(accelerator_type: str = "v5p-8") -> None:
    """With no TPU attached, tells libtpu (before it loads) not to look for one nor ask the
    cloud metadata server: it then compiles for topologies and never reaches the network.
    Several processes may then load it at once (compile-only: no chip to lock), e.g. a
    test run's workers. Values the user set are kept."""
    if tpu_attached():
        return
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", accelerator_type),
                       ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0"),
                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
        os.environ.setdefault(key, value)


# XLA:CPU warns when the local devices of one collective reach it more than 20 s apart
# (--xla_cpu_collective_call_warn_stuck_timeout_seconds), then ends the process (LOG(FATAL),
# SIGABRT) if this many seconds more pass; its default is 40.
COLLECTIVE_WAIT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"


def patient_host_collectives(seconds: int = 600) -> None:
    """Lets the CPU devices of one collective arrive up to 20 + `seconds` s apart (XLA's
    default: 20 + 40 s, then it aborts the process). Fake host devices
    (`--xla_force_host_platform_device_count`) share the machine's cores and reach a collective
    one after another: under load (a test run's workers beside multi-process runs on 2 cores)
    they arrived 29 s apart here, half XLA's limit. Takes effect before JAX starts its CPU
    backend (it runs when `sparsity_jax` is imported); a value in XLA_FLAGS is kept. A real
    deadlock still ends, after 20 + `seconds` s. Older jaxlibs, which may not know the flag
    (XLA ends a process on an unknown one), are left alone."""
    flags = os.environ.get("XLA_FLAGS", "")
    if COLLECTIVE_WAIT_FLAG not in flags and _version(importlib.metadata.version("jaxlib")) >= (0, 9):
        os.environ["XLA_FLAGS"] = f"{flags} {COLLECTIVE_WAIT_FLAG}={seconds}".strip()


def _version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version string: "0.10.2" → (0, 10)."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def topology_devices(topology: Topology | str) -> list:
    """The compile-only devices of a TPU slice (all hosts'), for `jax.jit(...).lower(...)
    .compile()`; no TPU needs to be attached. UserError without libtpu or when libtpu does
    not know the slice."""
    topo = parse_topology(topology) if isinstance(topology, str) else topology
    if importlib.util.find_spec("libtpu") is None:
        raise UserError(f"compiling for {topo.name} needs libtpu: install it with "
                        "`pip install -c constraints.txt -e '.[tpu]'` (or run `make tpu-check`).")
    no_tpu_environment(topo.cloud_name)
    from jax.experimental import topologies  # here: only a TPU compile needs it

    try:
        desc = topologies.get_topology_desc(
            topology_name=topo.libtpu_name, platform="tpu",
            chip_config_name="megacore" if topo.chip.name in ("v4", "v5p") else "default",
            chips_per_host_bounds=topo.chips_per_host, num_slices=1)
    except Exception as e:  # noqa: BLE001 - libtpu's own message names what it refused
        raise UserError(f"libtpu does not know the TPU slice {topo.name} ({topo.libtpu_name}: "
                        f"{str(e).splitlines()[0][:160]}); use one of {', '.join(KNOWN_TOPOLOGIES)}.") from None
    return list(desc.devices)

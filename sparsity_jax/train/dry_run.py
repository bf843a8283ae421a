"""Ahead-of-time dry run of a training config: build the mesh and the train step, lower
and compile it on abstract inputs (`jax.ShapeDtypeStruct`s: nothing is allocated, no data
read, nothing written), and report what one step needs per device (XLA's memory
analysis), its model FLOPs (XLA's cost analysis of the lowered step without remat's
recomputation, as the trainer's MFU counts them: `methods.accounting.step_flops`), the
compile time and whether it fits a
device's memory, as MaxText's `train_compile.py` does.

On a CPU machine fake devices stand in for the accelerators
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`); with libtpu installed a TPU
topology given by name (`v5e-256`) is compiled for without any TPU attached.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import jax

from sparsity_jax.errors import UserError
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.settings import Settings
from sparsity_jax.train.setup import build

GIB = 1024**3
# HBM per chip / GPU memory per device, bytes
DEVICE_MEMORY = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "h100": 80 * GIB, "h200": 141 * GIB}


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What one compiled train step needs; bytes are per device."""

    argument_bytes_per_device: int
    output_bytes_per_device: int
    alias_bytes_per_device: int
    temp_bytes_per_device: int
    peak_bytes_per_device: int
    flops_per_step: float
    compile_seconds: float
    devices: int
    device_kind: str
    capacity_bytes_per_device: int | None  # the memory it is checked against; None: unknown
    capacity_of: str
    mesh: str

    @property
    def fits(self) -> bool | None:
        cap = self.capacity_bytes_per_device
        return None if cap is None else self.peak_bytes_per_device <= cap

    def to_json(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), fits=self.fits)


def dry_vocab_size(settings: Settings) -> int:
    """The vocabulary size without reading data: model.vocab_size, 259 bytes, or the
    SentencePiece model's size (`data.spm_vocab_size`, what one trained from data has)."""
    if settings.model.vocab_size:
        return settings.model.vocab_size
    return 259 if settings.data.vocab == "byte" else int(settings.data.spm_vocab_size)


def topology_devices(name: str) -> list:
    """The devices of a TPU topology by name (e.g. "v5e-256"), compiled for without TPUs."""
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # no libtpu, or a name it does not know
        raise UserError(f"--topology {name} needs libtpu installed (pip install 'jax[tpu]') and a topology it knows "
                        f"({type(e).__name__}); drop --topology to compile for this machine's devices.") from None


def _capacity(device: str | None, devices: list) -> tuple[int | None, str]:
    if device is not None:
        if device not in DEVICE_MEMORY:
            raise UserError(f"--dry-run-device {device!r} is not one of {', '.join(DEVICE_MEMORY)}; pick one.")
        return DEVICE_MEMORY[device], device
    stats = getattr(devices[0], "memory_stats", lambda: None)() or {}
    limit = stats.get("bytes_limit")
    return (int(limit), devices[0].device_kind) if limit else (None, devices[0].device_kind)


def dry_run(settings: Settings, method: Callable, *, device: str | None = None, topology: str | None = None) -> DryRun:
    """Compiles the first train step of `settings` (the method's plain variant) for this
    machine's devices or a TPU `topology`, checked against `device`'s memory (a key of
    `DEVICE_MEMORY`; None: the devices' own reported memory, if any)."""
    devices = topology_devices(topology) if topology else jax.devices()
    capacity, capacity_of = _capacity(device, devices)
    run = build(settings, dry_vocab_size(settings), method, devices=devices)
    t0 = time.perf_counter()
    compiled = run.train_step.lower(run.abstract_state, run.abstract_batch(), Sparsify(), None).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = run.lowered_for_counting(Sparsify(), None).cost_analysis()  # every dot, every block
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    args, out, alias, temp = (int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp"))
    # arguments + temporaries + outputs not aliased to arguments: everything live at once, an
    # upper bound; XLA's own peak (liveness-aware) when it reports a larger one
    peak = max(int(getattr(mem, "peak_memory_in_bytes", 0) or 0), args + out - alias + temp)
    n = len(devices)
    flops = float((cost or {}).get("flops", 0.0)) * settings.train.grad_accum
    return DryRun(args, out, alias, temp, peak, flops, seconds, n,
                  devices[0].device_kind, capacity, capacity_of,
                  " ".join(f"{k}={v}" for k, v in run.mesh.shape.items()))


def table(result: DryRun, settings: Settings, name: str) -> str:
    """The human-readable report (one line per quantity)."""
    t = settings.train
    gib = lambda b: f"{b / GIB:9.3f} GiB"  # noqa: E731
    cap = result.capacity_bytes_per_device
    fits = ("unknown (no memory reported; name one with --dry-run-device)" if cap is None else
            f"{'yes' if result.fits else 'NO'}: peak {result.peak_bytes_per_device / cap:.0%} of {gib(cap).strip()}")
    rows = [
        f"dry run of {name}: {result.devices} × {result.device_kind}, mesh {result.mesh}, global batch {t.global_batch_size} × {t.seq_len} tokens, grad_accum {t.grad_accum}, "
        f"remat {settings.model.remat}, scan_layers {settings.model.scan_layers}",
        f"  arguments per device   {gib(result.argument_bytes_per_device)}",
        f"  outputs per device     {gib(result.output_bytes_per_device)} (aliased {gib(result.alias_bytes_per_device).strip()})",
        f"  temporary per device   {gib(result.temp_bytes_per_device)}",
        f"  peak per device        {gib(result.peak_bytes_per_device)}",
        f"  FLOPs per step         {result.flops_per_step:.4g}",
        f"  compile seconds        {result.compile_seconds:9.2f}",
        f"  fits {result.capacity_of}: {fits}",
    ]
    return "\n".join(rows)


def run_dry(settings: Settings, method: Callable, name: str, *, device: str | None = None,
            topology: str | None = None) -> int:
    """Prints the table and, last, one JSON line; UserError (exit 2) when it does not fit."""
    result = dry_run(settings, method, device=device, topology=topology)
    print(table(result, settings, name))
    print(json.dumps(result.to_json()), flush=True)
    if result.fits is False:
        raise UserError(f"{name} needs {result.peak_bytes_per_device / GIB:.2f} GiB per device, more than "
                        f"{result.capacity_of}'s {result.capacity_bytes_per_device / GIB:.0f} GiB; raise "
                        "train.grad_accum, set model.remat=full or use more devices.")
    return 0

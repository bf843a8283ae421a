"""Ahead-of-time dry run of a training config: build the mesh and the train step, lower
and compile it on abstract inputs (`jax.ShapeDtypeStruct`s: nothing is allocated, no data
read, nothing written), and report what one step needs per device, as MaxText's
`train_compile.py` does: memory (the compiler's memory analysis), model FLOPs (XLA's cost
analysis of the step without remat's recomputation, as the trainer's MFU counts them), the
compile time and whether it fits.

On a CPU machine fake devices stand in for the accelerators
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`); with libtpu installed, a TPU slice
(`--topology v5p-8`, `devices.hardware`) is compiled for with no TPU attached. The TPU
compiler then also estimates the step time (its cost analysis' `optimal_seconds`), from
which tokens/s and MFU follow: compiler estimates, never measurements. Where it gives a
negative "unknown" instead (seen on v5e, and wherever libtpu's own ConcatBitcast or the
MoE step's gathers appear), the step time is the roofline of the compiler's own per-chip
counts, max(FLOPs / peak, bytes accessed / HBM bandwidth), and says so. XLA counts a
loop's body once, so a scanned model's counts are extrapolated from 1- and 2-layer
unrolled compiles of the same step, and the gradient-accumulation loop's are multiplied
by its trip count (the optimizer update then counts grad_accum times: leaning high).
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Callable

import jax

from sparsity_jax.errors import UserError
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.devices import hardware
from sparsity_jax.settings import Settings
from sparsity_jax.train.setup import build, cost_of

GIB = hardware.GIB
ESTIMATE = "compiler estimate"  # the label of every figure the TPU compiler estimates
ROOFLINE = "compiler estimate: roofline of its FLOPs and bytes"  # ... where it gives no time of its own
_OOM = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available")


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What one compiled train step needs; bytes are per device. `compiler_error`: the
    compiler refused the step (out of memory), with `peak_bytes_per_device` what it asked."""

    argument_bytes_per_device: int
    output_bytes_per_device: int
    alias_bytes_per_device: int
    temp_bytes_per_device: int
    peak_bytes_per_device: int
    flops_per_step: float  # model FLOPs of one step over all devices (no remat recomputation)
    compile_seconds: float
    devices: int
    hosts: int
    device_kind: str
    capacity_bytes_per_device: int | None  # the memory it is checked against; None: unknown
    capacity_of: str
    mesh: str
    tokens_per_step: int
    per_device_batch: int  # sequences per device in one micro-batch
    peak_flops_per_device: float | None
    compiler_step_seconds: float | None = None  # the TPU compiler's estimate (see the module doc)
    roofline_step_seconds: float | None = None  # the roofline of the compiler's counts (see the module doc)
    compiler_error: str | None = None

    @property
    def fits(self) -> bool | None:
        if self.compiler_error:
            return False
        cap = self.capacity_bytes_per_device
        return None if cap is None else self.peak_bytes_per_device <= cap

    @property
    def flops_per_device(self) -> float:
        return self.flops_per_step / self.devices

    @property
    def estimated_step_seconds(self) -> float | None:
        """The compiler's step-time estimate, else the roofline of its counts."""
        return self.compiler_step_seconds or self.roofline_step_seconds

    @property
    def estimate_source(self) -> str:
        return ESTIMATE if self.compiler_step_seconds else ROOFLINE

    @property
    def estimated_tokens_per_second(self) -> float | None:
        s = self.estimated_step_seconds
        return self.tokens_per_step / s if s else None

    @property
    def estimated_mfu(self) -> float | None:
        s, peak = self.estimated_step_seconds, self.peak_flops_per_device
        return self.flops_per_device / (s * peak) if s and peak else None

    def to_json(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), fits=self.fits, flops_per_device=self.flops_per_device,
                    estimated_step_seconds=self.estimated_step_seconds, estimate_source=self.estimate_source,
                    estimated_tokens_per_second=self.estimated_tokens_per_second, estimated_mfu=self.estimated_mfu)


def dry_vocab_size(settings: Settings) -> int:
    """The vocabulary size without reading data: model.vocab_size, 259 bytes, or the
    SentencePiece model's size (`data.spm_vocab_size`, what one trained from data has)."""
    if settings.model.vocab_size:
        return settings.model.vocab_size
    return 259 if settings.data.vocab == "byte" else int(settings.data.spm_vocab_size)


def target_devices(topology: str | None) -> tuple[list, int]:
    """The devices to compile for (a TPU slice's, or this machine's) and their host count."""
    if topology:
        topo = hardware.parse_topology(topology)
        devices = hardware.topology_devices(topo)
        # an executable compiled with no TPU attached cannot be loaded back from JAX's
        # persistent cache: a dry run neither reads nor writes it
        jax.config.update("jax_enable_compilation_cache", False)
        return devices, topo.hosts
    return jax.devices(), jax.process_count()


def device_capacity(device: str | None, devices: list) -> tuple[int | None, str]:
    if device is not None:
        chip = hardware.chip_named(device)
        return chip.hbm_bytes, chip.name
    chip = hardware.chip_of(devices[0])
    if chip is not None and chip.hbm_bytes and devices[0].platform == "tpu":
        return chip.hbm_bytes, chip.name  # compile-only devices report no memory stats
    try:
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - a device that reports no memory
        limit = None
    return (int(limit), devices[0].device_kind) if limit else (None, devices[0].device_kind)


def with_model(settings: Settings, **model: Any) -> Settings:
    """`settings` with model fields replaced (e.g. num_layers=1 for a counting variant)."""
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, **model))


def with_train(settings: Settings, **train: Any) -> Settings:
    return dataclasses.replace(settings, train=dataclasses.replace(settings.train, **train))


def compile_step(settings: Settings, method: Callable, devices: list, variant=None):
    """(run, compiled step or the compiler's out-of-memory message, compile seconds) of the
    method's `variant` (None: its plain step; e.g. `methods.base.Variant(top_k=K)`, an MoE step)."""
    run = build(settings, dry_vocab_size(settings), method, devices=devices)
    t0 = time.perf_counter()
    try:
        compiled = run.train_step.lower(run.abstract_state, run.abstract_batch(), Sparsify(), variant).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        compiled = str(e).splitlines()[0].split("RESOURCE_EXHAUSTED: ")[-1]
    return run, compiled, time.perf_counter() - t0


def optimal_seconds(compiled) -> float | None:
    """The compiler's estimated run time of a compiled module; None where it gives none (no
    TPU compiler, or its negative "unknown", e.g. for the MoE step's gathers)."""
    seconds = cost_of(compiled).get("optimal_seconds")
    return seconds if seconds is not None and seconds > 0 else None


def compiler_costs(settings: Settings, method: Callable, devices: list, compiled) -> dict[str, float | None] | None:
    """The compiler's per-device estimate of one step: {"seconds" (None: it gave none),
    "flops", "bytes"}, with the layer and accumulation loops counted at their trip counts
    (see the module doc); None on a backend with no estimate (no `optimal_seconds`)."""
    def costs(c) -> dict[str, float | None]:
        cost = cost_of(c)
        return {"seconds": optimal_seconds(c), "flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0)}

    if "optimal_seconds" not in cost_of(compiled):
        return None
    own = costs(compiled)
    layers = settings.model.num_layers
    if settings.model.scan_layers and layers > 1:
        per = []
        for k in (1, 2):
            _, variant, _ = compile_step(with_model(settings, num_layers=k, scan_layers=False), method, devices)
            if isinstance(variant, str):
                return None
            per.append(costs(variant))
        line = lambda a, b: None if a is None or b is None else a + (layers - 1) * (b - a)  # noqa: E731
        own = {k: line(per[0][k], per[1][k]) for k in own}
    g = settings.train.grad_accum
    return {k: None if v is None else v * g for k, v in own.items()}


def estimates(costs: dict | None, device) -> dict[str, float | None]:
    """DryRun's compiler_step_seconds and roofline_step_seconds from `compiler_costs`."""
    chip = hardware.chip_of(device)
    if costs is None or chip is None:
        return {}
    roofline = max(costs["flops"] / chip.peak_flops, costs["bytes"] / chip.hbm_bandwidth)
    return {"compiler_step_seconds": costs["seconds"], "roofline_step_seconds": roofline or None}


def oom_bytes(message: str) -> int:
    m = _OOM.search(message)
    return int(float(m[1]) * 1024 ** "KMGT".index(m[2]) * 1024) if m else 0


def dry_run(settings: Settings, method: Callable, *, device: str | None = None, topology: str | None = None,
            estimate: bool = True) -> DryRun:
    """Compiles the first train step of `settings` (the method's plain variant) for this
    machine's devices or a TPU slice `topology`, checked against `device`'s memory (a
    `devices.hardware` chip name; None: the devices' own)."""
    devices, hosts = target_devices(topology)
    capacity, capacity_of = device_capacity(device, devices)
    run, compiled, seconds = compile_step(settings, method, devices)
    flops = run.model_flops(Sparsify(), None) or 0.0  # every dot, every block
    t = settings.train
    common = dict(flops_per_step=flops, compile_seconds=seconds, devices=len(devices), hosts=hosts,
                  device_kind=devices[0].device_kind, capacity_bytes_per_device=capacity, capacity_of=capacity_of,
                  mesh=" ".join(f"{k}={v}" for k, v in run.mesh.shape.items()),
                  tokens_per_step=t.global_batch_size * t.seq_len,
                  per_device_batch=settings.micro_batch // (run.mesh.shape["data"] * run.mesh.shape["fsdp"]),
                  peak_flops_per_device=hardware.peak_flops_per_device(devices[0]))
    if isinstance(compiled, str):
        return DryRun(0, 0, 0, 0, oom_bytes(compiled), compiler_error=compiled, **common)
    mem = compiled.memory_analysis()
    args, out, alias, temp = (int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp"))
    # arguments + temporaries + outputs not aliased to arguments: everything live at once, an
    # upper bound; XLA's own peak (liveness-aware) when it reports a larger one
    peak = max(int(getattr(mem, "peak_memory_in_bytes", 0) or 0), args + out - alias + temp)
    result = DryRun(args, out, alias, temp, peak, **common)
    if estimate and result.fits is not False:
        costs = compiler_costs(settings, method, devices, compiled)
        result = dataclasses.replace(result, **estimates(costs, devices[0]))
    return result


def describe(settings: Settings) -> str:
    t, m = settings.train, settings.model
    return (f"global batch {t.global_batch_size} × {t.seq_len} tokens, grad_accum {t.grad_accum}, remat {m.remat}, "
            f"scan_layers {m.scan_layers}")


def table(result: DryRun, settings: Settings, name: str) -> str:
    """The human-readable report (one line per quantity)."""
    gib = lambda b: f"{b / GIB:9.3f} GiB"  # noqa: E731
    cap = result.capacity_bytes_per_device
    if result.compiler_error:
        fits = f"NO: the compiler refused the step ({result.compiler_error})"
    elif cap is None:
        fits = "unknown (no memory reported; name one with --dry-run-device)"
    else:
        fits = f"{'yes' if result.fits else 'NO'}: peak {result.peak_bytes_per_device / cap:.0%} of {gib(cap).strip()}"
    hosts = f" on {result.hosts} hosts" if result.hosts > 1 else ""
    rows = [
        f"dry run of {name}: {result.devices} × {result.device_kind}{hosts}, mesh {result.mesh}, {describe(settings)}",
        f"  arguments per device   {gib(result.argument_bytes_per_device)}",
        f"  outputs per device     {gib(result.output_bytes_per_device)} (aliased {gib(result.alias_bytes_per_device).strip()})",
        f"  temporary per device   {gib(result.temp_bytes_per_device)}",
        f"  peak per device        {gib(result.peak_bytes_per_device)}",
        f"  model FLOPs per step   {result.flops_per_step:.4g} ({result.flops_per_device:.4g} per device)",
        f"  compile seconds        {result.compile_seconds:9.2f}",
    ]
    if result.estimated_step_seconds:
        mfu = f", MFU {result.estimated_mfu:.1%}" if result.estimated_mfu else ""
        rows.append(f"  step time              {result.estimated_step_seconds:9.4g} s, "
                    f"{result.estimated_tokens_per_second:,.0f} tokens/s{mfu} ({result.estimate_source})")
    rows.append(f"  fits {result.capacity_of}: {fits}")
    return "\n".join(rows)


def check_fits(result: DryRun, name: str) -> None:
    """UserError (exit 2) when the step does not fit: one sentence that names the fixes."""
    if result.fits is False:
        raise UserError(f"{name} needs {result.peak_bytes_per_device / GIB:.2f} GiB per device, more than "
                        f"{result.capacity_of}'s {(result.capacity_bytes_per_device or 0) / GIB:.0f} GiB; raise "
                        "train.grad_accum, set model.remat=full, use more devices or try --tune.")


def run_dry(settings: Settings, method: Callable, name: str, *, device: str | None = None,
            topology: str | None = None) -> int:
    """Prints the table and, last, one JSON line; UserError (exit 2) when it does not fit."""
    result = dry_run(settings, method, device=device, topology=topology)
    print(table(result, settings, name))
    print(json.dumps(result.to_json()), flush=True)
    check_fits(result, name)
    return 0

"""Device memory: how many bytes are free, the one place every memory-aware choice asks;
and host memory that freed buffers give back (`return_freed_memory`).

Accelerators report their memory (`Device.memory_stats()`: bytes_limit − bytes_in_use).
CPU devices report nothing; they share the host's memory, so each is given the host's
available memory — `MemAvailable` of /proc/meminfo, else `os.sysconf` available pages ×
page size — divided by the number of local CPU devices (8 fake devices on one host
split it 8 ways). Where neither says anything, `UNKNOWN_FREE` is assumed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

MEMINFO = "/proc/meminfo"
UNKNOWN_FREE = 2 << 30  # bytes per device assumed free where nothing is reported


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETURN_FREED_BYTES = 1 << 20


def return_freed_memory(threshold: int = RETURN_FREED_BYTES) -> bool:
    """Makes glibc give freed buffers of ≥ `threshold` bytes back to the OS (XLA:CPU's
    buffers and numpy arrays are malloc'd): allocations that large are mmap'd, and the
    heap is trimmed past it. By default glibc raises its mmap threshold to the largest
    buffer freed so far (up to 32 MB), so a model's 10–30 MB temporaries land on the heap
    and stay in the process's RSS after they are freed: 0.5 GB more peak RSS on a
    SmolLM2-135M `cett` (bench/results/pretrained_speed_smollm2.txt). True where it
    applied (Linux with glibc); elsewhere nothing changes. The commands call it first."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))


def host_available_bytes() -> int | None:
    """The host's available memory in bytes (MemAvailable, else sysconf), or None."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _stats(device) -> dict | None:
    try:
        return device.memory_stats()
    except Exception:  # backends without the query raise (e.g. Unimplemented)
        return None


def free_bytes(device: Any = None) -> int:
    """Bytes free on `device` (default: the first local device): its own report where it
    gives one, for a CPU device its share of the host's available memory, else
    `UNKNOWN_FREE`."""
    device = jax.local_devices()[0] if device is None else device
    stats = _stats(device)
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        host = host_available_bytes()
        if host is not None:
            return host // max(1, sum(d.platform == "cpu" for d in jax.local_devices()))
    return UNKNOWN_FREE


def min_free_bytes(devices: Sequence[Any] | None = None, budget: int | None = None) -> int:
    """Bytes free on the most loaded of `devices` (default: the local ones), or `budget`
    when given; the minimum over processes, so that every process makes the same choice."""
    free = budget if budget is not None else min(free_bytes(d) for d in (devices or jax.local_devices()))
    if jax.process_count() > 1:
        # in MiB as int32: without jax_enable_x64 an int64 would be truncated to int32
        mib = np.int32(min(free >> 20, np.iinfo(np.int32).max))
        free = int(np.min(multihost_utils.process_allgather(mib))) << 20
    return int(free)

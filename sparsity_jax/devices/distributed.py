"""Multi-process start-up: `jax.distributed.initialize` from flags or the environment.

Local / GPU clusters: pass the coordinator address, process count and id (flags
`--coordinator`, `--num-processes`, `--process-id`, or the environment variables
SPARSITY_JAX_COORDINATOR, SPARSITY_JAX_NUM_PROCESSES, SPARSITY_JAX_PROCESS_ID).
TPU pod slices: `--distributed` with no address lets JAX discover the slice.
"""
from __future__ import annotations

import os

import jax

from sparsity_jax.errors import UserError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
    """Initialises JAX's multi-process runtime when asked to; returns whether it did."""
    coordinator = coordinator or os.environ.get("SPARSITY_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("SPARSITY_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["SPARSITY_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("SPARSITY_JAX_PROCESS_ID"):
        process_id = int(os.environ["SPARSITY_JAX_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise UserError("a coordinator address needs --num-processes and --process-id as well")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False

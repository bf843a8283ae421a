"""Training methods behind one interface, each with its device side (`StepMethod`: train
state entries, the step's options, the post-gradient update) and host side
(`TrainingMethod`: variant per step, FLOPs, accounting, SSD's controller): dense (with
hidden-unit tracking and dead-unit masking), SSD (switchable sparse-dense) and its
baselines SMoE, MoE-Dropout and PLD. `make_method` is what a command hands the trainer:
the device side of a run's method from its settings and mesh."""
from sparsity_jax.methods.accounting import Accounting, StepFlops, block_share, step_flops
from sparsity_jax.methods.base import (
    StepMethod, StepOptions, TrainingMethod, Variant, saved_state, trained_sparse,
)
from sparsity_jax.methods.dense import DeadUnitMasking, Dense, DenseStep
from sparsity_jax.methods.moe import MoEBaseline, MoEStep, moe_dropout_top_k
from sparsity_jax.methods.pld import PLD, PLDSchedule, PLDStep
from sparsity_jax.methods.ssd import SSD, SSDStep, switch_config

STEPS = {"dense": DenseStep, "ssd": SSDStep, "smoe": MoEStep, "moe_dropout": MoEStep, "pld": PLDStep}


def make_method(settings, mesh) -> StepMethod:
    """The device side of the training method `settings.method.name` on `mesh`; its
    `host(run, meta)` gives the host side once the run is built."""
    return STEPS[settings.method.name].of(settings, mesh)


__all__ = [
    "PLD", "SSD", "STEPS", "Accounting", "DeadUnitMasking", "Dense", "DenseStep", "MoEBaseline", "MoEStep",
    "PLDSchedule", "PLDStep", "SSDStep", "StepFlops", "StepMethod", "StepOptions", "TrainingMethod", "Variant",
    "block_share", "make_method", "moe_dropout_top_k", "saved_state", "step_flops", "switch_config",
    "trained_sparse",
]

"""Training methods behind one interface (`TrainingMethod`): dense, dead-unit masking,
SSD (switchable sparse-dense) and its baselines SMoE, MoE-Dropout and PLD; their FLOPs
and wall-clock accounting. `make_method` picks the run's method from its settings."""
from sparsity_jax.methods.accounting import Accounting, StepFlops, block_share, step_flops
from sparsity_jax.methods.base import Dense, TrainingMethod, saved_state, trained_sparse
from sparsity_jax.methods.moe import MoEBaseline, moe_dropout_top_k
from sparsity_jax.methods.pld import PLD, PLDSchedule
from sparsity_jax.methods.ssd import SSD, switch_config
from sparsity_jax.methods.unit_mask import DeadUnitMasking


def make_method(run, meta: dict | None = None) -> TrainingMethod:
    """The training method of a built run (`train.setup.Run`), resumed from a checkpoint's
    metadata when given."""
    settings = run.settings
    kind = {"dense": DeadUnitMasking if settings.unit_mask.at_step else Dense, "ssd": SSD, "smoe": MoEBaseline,
            "moe_dropout": MoEBaseline, "pld": PLD}[settings.ssd.method]
    return kind(run, saved_state(meta))


__all__ = [
    "PLD", "SSD", "Accounting", "DeadUnitMasking", "Dense", "MoEBaseline", "PLDSchedule", "StepFlops",
    "TrainingMethod", "block_share", "make_method", "moe_dropout_top_k", "saved_state", "step_flops",
    "switch_config", "trained_sparse",
]

"""A short per-layer sparsity summary printed at the end of training."""
from __future__ import annotations

from sparsity_jax.runtime.workdir import Workdir


def format_summary(summary: dict) -> str:
    if summary.get("preempted"):
        return (f"preempted at step {summary['step']}: checkpoint saved in {summary['workdir']}; "
                "run the same command again to resume")
    ratios = summary.get("activation_ratio") or []
    lines = [
        f"trained to step {summary['step']}: validation loss {summary['loss']:.4f}, "
        f"perplexity {summary['perplexity']:.3f}",
        "layer  activation ratio  sparsity",
    ]
    lines += [f"{i:>5d}  {r:>16.3f}  {1 - r:>8.3f}" for i, r in enumerate(ratios)]
    wd = Workdir(summary.get("workdir", "."))
    lines += [
        f"outputs in {wd}:",
        f"  checkpoints  {wd.checkpoints}",
        f"  metrics      {wd.metrics}",
        f"  tensorboard  {wd.tensorboard}  (tensorboard --logdir {wd.tensorboard})",
        f"  summary      {wd.summary}",
    ]
    return "\n".join(lines)


def print_summary(summary: dict) -> None:
    print(format_summary(summary), flush=True)

"""Every checkpoint of a trained workdir evaluated (`sparsity-jax evaluate`): validation
loss, perplexity, per-layer activation ratio (a ≠ 0: CETT 0), training tokens passed, and
the activation ratio at PPL-p% (the stabilised CETT of Sparsing Law App. B from
`workflows.ppl_sweep.ppl_of_run` on the same validation batches): the points `scaling` fits."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from sparsity_jax.runtime import names
from sparsity_jax.workflows.ppl_sweep import PplSweep, ppl_of_run

Log = Callable[[str], None]


@dataclasses.dataclass
class Evaluation:
    """eval.json: one row per checkpoint; `ppl_search` (the sweep's per-p search) when
    PPL-p% was asked for, each row then holding {"<p>": activation ratio} under "ppl_p";
    `sweep`: that whole sweep (its own report, ppl.json; not part of eval.json)."""

    workdir: str
    validation_tokens: int
    checkpoints: list[dict]
    ppl_search: list[dict] | None = None
    sweep: PplSweep | None = None

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "sweep" and getattr(self, f.name) is not None}


def evaluate_checkpoints(trained, log: Log = lambda msg: None) -> list[dict]:
    """Loss, accuracy, perplexity, per-layer activation ratio, training tokens and warm-up
    flag of every checkpoint of a trained workdir (`runtime.trained.Trained`)."""
    t = trained.settings.train
    rows = []
    for step in trained.steps:
        state, _ = trained.restore(step)
        m = trained.run.evaluate(state["params"], trained.val, trained.run.sparsify(state))
        row = {"step": step, "train_tokens": step * t.global_batch_size * t.seq_len,
               "warmup": step <= trained.settings.optimizer.warmup_steps,
               **{k: np.asarray(v).tolist() for k, v in m.items()}}
        row["activation_ratio_cett0"] = float(np.mean(row[names.ACTIVATION_RATIO]))
        rows.append(row)
        log(f"step {step}: loss {row[names.LOSS]:.4f}, perplexity {row[names.PERPLEXITY]:.3f}, activation "
            f"ratio/layer {[round(r, 3) for r in row[names.ACTIVATION_RATIO]]}")
    return rows


def evaluate_run(trained, ps: Sequence[float] = (), log: Log = lambda msg: None) -> Evaluation:
    """`evaluate_checkpoints`, and with `ps` the activation ratio at each PPL-p% (1 − sparsity
    at the stabilised CETT) of every checkpoint."""
    rows = evaluate_checkpoints(trained, log)
    out = Evaluation(trained.path, int(rows[0][names.TOKENS]), rows)
    if ps:
        sweep = ppl_of_run(trained, ps, log=log)
        by_step = {r["step"]: r for r in sweep.checkpoints}
        for row in rows:
            row["ppl_p"] = {f"{q['p']:g}": q["activation_ratio"] for q in by_step[row["step"]]["ppl_p"]}
        out.ppl_search, out.sweep = sweep.search, sweep
    return out

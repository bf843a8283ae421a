"""PPL-p% sparsity of every checkpoint of a trained workdir (`sparsity-jax ppl`): the
stabilising strategy of Sparsing Law App. B (`search.sweep.stabilised_sweep`) on the
run's validation batches, top-k / FAT-ε Pareto curves and neuron statistics, as a
`PplSweep` that `report.cett_report.write_ppl_report` renders (ppl.json + PNGs)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.runtime.trained import real_tokens
from sparsity_jax.search.sweep import PARETO_METHODS, stabilised_sweep

Log = Callable[[str], None]


@dataclasses.dataclass
class PplSweep:
    """`stabilised_sweep` of a trained workdir: `search` (per p), `checkpoints` (per step),
    `pareto`, the joint search's `mode`, and `arrays` of the last checkpoint (figures)."""

    workdir: str
    ppl_p: list[float]
    tol: float
    last: int
    validation_tokens: int
    search: list[dict]
    checkpoints: list[dict]
    pareto: dict
    mode: str
    arrays: dict

    def to_json(self) -> dict:
        """Everything but `arrays`, with the last checkpoint's neuron statistics as lists."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arrays"}
        a, r6 = self.arrays, lambda x: np.asarray(x).round(6).tolist()
        out["last_checkpoint"] = {"neuron_frequency": r6(a["neuron_frequency"]), "hot_cdf": r6(a["hot_cdf"])}
        if "per_token_id" in a:
            out["last_checkpoint"]["per_token_id_activation_ratio"] = r6(a["per_token_id"]["ratio"])
            out["last_checkpoint"]["per_token_id_count"] = np.asarray(a["per_token_id"]["count"]).tolist()
        return out


def check_sweep(settings, *, last: int = 5, tol: float = 1e-3, topk: Sequence[int] | None = None,
                pareto_methods: Sequence[str] = PARETO_METHODS) -> None:
    """UserError unless `last` > 0, 0 < `tol` < 1, every top-k k in [1, d_ff] and the
    Pareto methods are some of PARETO_METHODS; needs only the run's settings, so a
    command runs it before the model and data are built."""
    if last <= 0 or not 0 < tol < 1:
        raise UserError(f"Pass --last > 0 and 0 < --tol < 1; got last={last}, tol={tol}.")
    if not set(pareto_methods) <= set(PARETO_METHODS):
        raise UserError(f"Pass --pareto as some of {','.join(PARETO_METHODS)} or none; "
                        f"got {','.join(pareto_methods)!r}.")
    if topk is not None and not all(0 < k <= settings.model.d_ff for k in topk):
        raise UserError(f"Pass --topk values between 1 and d_ff = {settings.model.d_ff}; got {list(topk)}.")


def ppl_of_run(trained, ps: Sequence[float], *, last: int = 5, tol: float = 1e-3, topk: Sequence[int] | None = None,
               fat_eps: Sequence[float] | None = None, pareto_methods: Sequence[str] = PARETO_METHODS,
               log: Log = lambda msg: None) -> PplSweep:
    """`stabilised_sweep` over every checkpoint of a trained workdir (`runtime.trained.Trained`)
    on its validation batches; `topk` / `fat_eps` None: the default grids, `pareto_methods`
    empty: no Pareto sweep. The options are checked (`check_sweep`) before any pass."""
    check_sweep(trained.settings, last=last, tol=tol, topk=topk, pareto_methods=pareto_methods)
    log(f"PPL-p% for p = {list(ps)} on {len(trained.steps)} checkpoints of {trained.path}")
    t = trained.settings.train
    result = stabilised_sweep(
        trained.run.graphdef, trained.steps, lambda s: trained.restore(s)[0]["params"], trained.val, ps,
        tokens_per_step=t.global_batch_size * t.seq_len, warmup_steps=trained.settings.optimizer.warmup_steps,
        last=last, tol=tol, topk=topk, fat_eps=fat_eps, pareto_methods=pareto_methods,
        vocab_size=trained.run.model_cfg.vocab_size, log=log)
    return PplSweep(workdir=trained.path, ppl_p=[float(p) for p in ps], tol=tol, last=last,
                    validation_tokens=real_tokens(trained.val), **result)

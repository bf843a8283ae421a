"""`train --dry-run --tune`: compile a config's train step over remat policy × grad_accum
(which sets the per-device batch at a fixed global batch) for the target devices, and
pick the configuration with the fastest step the compiler estimates among those that fit.

Every candidate is a full dry run (`train.dry_run`: full depth, as configured, the TPU
compiler's own memory verdict; its step-time estimate only for those that fit). Per remat
policy, grad_accum values are tried from the smallest up and stop at the first that fits:
more accumulation only splits the same global batch into smaller, slower micro-batches.
A step the TPU compiler refuses for memory fails within seconds, so the misses are cheap.
Candidates are ranked by one kind of estimate for all: the compiler's step time where
every fitting candidate has one, else the roofline of its counts (`train.dry_run`), else
(on CPU, no estimate) the smallest grad_accum and then the lowest peak memory; the table
says which.
"""
from __future__ import annotations

from typing import Any, Callable

from sparsity_jax.errors import UserError
from sparsity_jax.nn.stack import REMAT_POLICIES
from sparsity_jax.settings import Settings
from sparsity_jax.train import dry_run as dr


def accumulations(settings: Settings, data_parallel: int) -> list[tuple[int, int]]:
    """(grad_accum, per-device batch) pairs the global batch allows, smallest accumulation first."""
    batch = settings.train.global_batch_size
    return [(g, batch // g // data_parallel) for g in range(1, batch + 1)
            if batch % g == 0 and (batch // g) % data_parallel == 0]


def candidate(settings: Settings, remat: str, grad_accum: int) -> Settings:
    return dr.with_train(dr.with_model(settings, remat=remat), grad_accum=grad_accum)


def tune(settings: Settings, method: Callable, *, device: str | None = None, topology: str | None = None,
         remats: tuple[str, ...] = tuple(REMAT_POLICIES)) -> tuple[list[tuple[Settings, dr.DryRun]], int | None]:
    """Every candidate tried with its dry run, in order, and the index of the chosen one
    (None: nothing fits)."""
    devices, _ = dr.target_devices(topology)
    mesh = dr.build(settings, dr.dry_vocab_size(settings), method, devices=devices).mesh
    tried = []
    for remat in remats:
        for accum, _ in accumulations(settings, mesh.shape["data"] * mesh.shape["fsdp"]):
            cand = candidate(settings, remat, accum)
            tried.append((cand, dr.dry_run(cand, method, device=device, topology=topology)))
            if tried[-1][1].fits is not False:
                break
    fitting = [i for i, (_, r) in enumerate(tried) if r.fits is not False]
    if not fitting:
        return tried, None
    return tried, min(fitting, key=ranking([tried[i][1] for i in fitting], tried))


def ranking(fitting: list[dr.DryRun], tried: list) -> Callable[[int], Any]:
    """Sort key over indices of `tried`: the compiler's step estimate where every fitting
    candidate has one, else the roofline of its counts, else (grad_accum, peak memory)."""
    for field in ("compiler_step_seconds", "roofline_step_seconds"):
        if all(getattr(r, field) for r in fitting):
            return lambda i: getattr(tried[i][1], field)
    return lambda i: (tried[i][0].train.grad_accum, tried[i][1].peak_bytes_per_device)


def tune_table(tried: list[tuple[Settings, dr.DryRun]], chosen: int | None) -> str:
    """One row per candidate: remat, grad_accum, per-device batch, peak, estimated step, fit."""
    rows = [f"  {'remat':6} {'grad_accum':>10} {'batch/device':>12} {'peak GiB':>9} {'step s':>10} "
            f"{'tokens/s':>12} {'MFU':>6}  fits"]
    sources = set()
    for i, (st, r) in enumerate(tried):
        if r.estimated_step_seconds:
            sources.add(r.estimate_source)
            mark = "" if r.compiler_step_seconds else "ʳ"
            step = f"{r.estimated_step_seconds:9.4g}{mark or ' '}"
            tps, mfu = f"{r.estimated_tokens_per_second:12,.0f}", f"{r.estimated_mfu:6.1%}" if r.estimated_mfu else "     -"
        else:
            step, tps, mfu = f"{'-':>10}", f"{'-':>12}", f"{'-':>6}"
        fits = ("refused: out of memory" if r.compiler_error else {True: "yes", False: "no", None: "unknown"}[r.fits])
        rows.append(f"  {st.model.remat:6} {st.train.grad_accum:>10} {r.per_device_batch:>12} "
                    f"{r.peak_bytes_per_device / dr.GIB:9.2f} {step} {tps} {mfu}  {fits}{' ← chosen' if i == chosen else ''}")
    if sources:
        rows.append(f"  (step s, tokens/s, MFU: {dr.ESTIMATE}" +
                    (f"; ʳ {dr.ROOFLINE}, where the compiler gives no time)" if dr.ROOFLINE in sources else ")"))
    else:
        rows.append("  (no step-time estimate on this backend: ranked by grad_accum, then peak memory)")
    return "\n".join(rows)


def run_tune(settings: Settings, method: Callable, name: str, *, device: str | None = None,
             topology: str | None = None, remats: tuple[str, ...] = tuple(REMAT_POLICIES)) -> int:
    """Prints the candidates, the chosen configuration's dry run and, last, its overrides
    as flags; UserError (exit 2) when nothing fits."""
    tried, chosen = tune(settings, method, device=device, topology=topology, remats=remats)
    first = tried[0][1]
    print(f"tuning {name} for {first.devices} × {first.device_kind} ({first.capacity_of}), global batch "
          f"{settings.train.global_batch_size} × {settings.train.seq_len} tokens:")
    print(tune_table(tried, chosen))
    if chosen is None:
        raise UserError(f"no remat policy and grad_accum fits {settings.train.global_batch_size} × "
                        f"{settings.train.seq_len} tokens in {first.capacity_of}'s memory on {first.devices} devices; "
                        "use more devices, a larger mesh.fsdp or a shorter train.seq_len.")
    st, result = tried[chosen]
    print(dr.table(result, st, name))
    print(f"--config.model.remat={st.model.remat} --config.train.grad_accum={st.train.grad_accum}", flush=True)
    return 0

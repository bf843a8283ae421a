"""The trained part of bench/sparse_decode.py (imports TensorFlow: the run's validation data).

On a trained run's last checkpoint, at its PPL-1% CETT: the per-layer thresholds
(`search.thresholds.thresholds_for_cett` on all validation tokens), the validation PPL
dense and with the masked `threshold` FFN mode (what sparse decoding computes), and the
greedy decode tokens/s dense vs `threshold` (budgets calibrated on the validation
batches, as `sparsity-jax generate` does) at each batch size, prompts cut from
validation sequences.
"""
from __future__ import annotations

import json
import os

import numpy as np

from sparsity_jax.infer import Decoder, Dense, Threshold
from sparsity_jax.infer.budget import calibrate
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.search.thresholds import sparse_pass, thresholds_for_cett, threshold_sparsify

PROMPT, NEW = 16, 48


def ppl_cett(path: str, p: float = 1.0) -> float:
    """CETT_p of PPL-`p`% from a `sparsity-jax ppl` report's ppl.json."""
    for row in json.load(open(path))["search"]:
        if row["p"] == p:
            return float(row.get("target_cett", row.get("cett")))  # "cett" in ppl.json written before issue 19
    raise SystemExit(f"{path} has no PPL-{p:g}% search; run `sparsity-jax ppl --ppl-p {p:g}` or pass --cett.")


def prompts_of(batches, rows: int) -> list[list[int]]:
    """The first PROMPT tokens of `rows` validation rows that hold at least that many real tokens."""
    out = []
    for batch in batches:
        ids, w = np.asarray(batch["inputs"]), np.asarray(batch["loss_weights"])
        out += [list(map(int, r[:PROMPT])) for r, m in zip(ids, w) if m[:PROMPT].all()]
        if len(out) >= rows:
            return out[:rows]
    raise SystemExit(f"fewer than {rows} validation rows with {PROMPT} real tokens")


def trained(args, rounds) -> None:
    from sparsity_jax.runtime.trained import checkpoints, open_trained, saved_config
    from sparsity_jax.settings import from_saved

    ckpt, steps = checkpoints(args.workdir)
    wd = open_trained(args.workdir, from_saved(saved_config(ckpt, steps[-1])), ckpt, steps)  # the run's saved config
    try:
        step = wd.steps[-1]
        params = wd.restore(step)[0]["params"]
    finally:
        wd.close()
    cett = args.cett if args.cett is not None else ppl_cett(
        args.ppl_json or os.path.join(args.workdir, "report", "ppl.json"))
    graphdef, mesh, m = wd.run.graphdef, wd.run.mesh, wd.run.model_cfg
    thr = thresholds_for_cett((graphdef, params), wd.val, cett, mesh=mesh)
    dense_loss = sparse_pass(graphdef, params, wd.val, Sparsify()).loss
    sparse_loss = sparse_pass(graphdef, params, wd.val, threshold_sparsify(thr.threshold)).loss
    print(f"\n== trained: {args.workdir} step {step} ({m.activation}, d={m.d_model}, F={m.d_ff}, "
          f"L={m.num_layers}), PPL-1% CETT {cett:.5f}: thresholds {np.round(thr.threshold, 5).tolist()}, "
          f"sparsity {np.round(thr.sparsity, 4).tolist()}")
    print(f"validation PPL: dense {np.exp(dense_loss):.4f}, threshold mode {np.exp(sparse_loss):.4f} "
          f"(ratio {np.exp(sparse_loss - dense_loss):.5f})")
    print(f"{'batch':>5s} {'dense tok/s':>11s} {'sparse tok/s':>12s} {'speed-up':>8s} {'active':>7s} "
          f"{'computed':>8s} {'budgets (layer 0)':>18s} {'over':>5s} {'dense steps':>11s}")
    dense = Decoder(graphdef, params, mesh, Dense())
    sparse = Decoder(graphdef, params, mesh, Threshold(), {"threshold": np.asarray(thr.threshold, np.float32)})
    for b in args.batches:
        prompts = prompts_of(wd.val, b)
        sparse.set_budgets(calibrate(sparse, wd.val, rows=b))
        gen = sparse.generate(prompts, NEW)  # compiles; its statistics are the ones reported
        dense.generate(prompts, NEW)
        med = rounds({"dense": lambda: dense.generate(prompts, NEW).decode_s,
                      "sparse": lambda: sparse.generate(prompts, NEW).decode_s}, args.rounds)
        st, toks, (active_L, computed_L) = gen.stats, b * (NEW - 1), gen.shares(m.d_ff)
        print(f"{b:5d} {toks / med['dense']:11.1f} {toks / med['sparse']:12.1f} {med['dense'] / med['sparse']:7.2f}x "
              f"{active_L.mean():7.3f} {computed_L.mean():8.3f} "
              f"{str(sparse.budgets[0]):>18s} {int(st['over'].sum()):5d} {int(st['dense'].sum()):11d}", flush=True)

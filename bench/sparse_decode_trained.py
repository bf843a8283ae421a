"""The trained part of bench/sparse_decode.py (imports TensorFlow: the run's validation data).

On a trained run's last checkpoint (configs/relu2/decode.py), at its PPL-1% CETT: the
per-layer thresholds (`search.thresholds.thresholds_for_cett` on all validation tokens),
the validation PPL dense and with the masked `threshold` mode, the trained predictors
(`sparsity-jax predictor --cett C`, if saved) with their recall of the threshold's kept
neurons and their predicted share, then bench/sparse_decode.py's rows (neuron gathers;
co-activation layout + block gathers) at each batch size: FFN inputs are the model's
own FFN inputs at random validation tokens, prompts are cut from validation rows.

`--layout-table W1,W2,...` prints the co-activation layout table instead (ReLU² Wins §4
hardware affinity as block shares): per run, per layer and on average, the neuron-active
share of the threshold mode at its PPL-1% CETT and the block-active share at b = 8 … 128
before and after a layout computed at each b (`infer.neuron_order.affinity_table`).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsity_jax.infer import Decoder
from sparsity_jax.infer.neuron_order import affinity_table, format_table
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from sparsity_jax.search.thresholds import sparse_pass, thresholds_for_cett, threshold_sparsify

PROMPT = 16


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


def load(workdir: str, cett: float | None = None):
    """(run, step, params, cett, thresholds result) of a run's last checkpoint."""
    from sparsity_jax.runtime.trained import checkpoints, open_trained, saved_config
    from sparsity_jax.settings import from_saved

    ckpt, steps = checkpoints(workdir)
    wd = open_trained(workdir, from_saved(saved_config(ckpt, steps[-1])), ckpt, steps)  # the run's saved config
    try:
        step = wd.steps[-1]
        params = wd.restore(step)[0]["params"]
    finally:
        wd.close()
    cett = cett if cett is not None else ppl_cett(os.path.join(workdir, "report", "ppl.json"))
    thr = thresholds_for_cett((wd.run.graphdef, params), wd.val, cett, mesh=wd.run.mesh)
    return wd, step, params, cett, thr


def records(graphdef, params, batches, sparsify: Sparsify, name: str, max_tokens: int = 2048) -> list[np.ndarray]:
    """Per layer, the recorded `name` ('mask' or 'inputs') at up to `max_tokens` real validation tokens, (M, ·)."""
    run = jax.jit(lambda p, t, s, q: nnx.merge(graphdef, p).apply(t, s, q, sparsify=sparsify, record=name)[1][name])
    out, n = [], 0
    for batch in batches:
        rec = np.asarray(run(params, batch["inputs"], batch["segment_ids"], batch["positions"]))
        real = np.asarray(batch["loss_weights"]).reshape(-1) > 0
        out.append(rec.reshape(rec.shape[0], -1, rec.shape[-1])[:, real])
        n += int(real.sum())
        if n >= max_tokens:
            break
    return list(np.concatenate(out, axis=1)[:, :max_tokens])


def predictor_arrays(workdir: str, step: int, cett: float):
    from sparsity_jax.predict.store import exists, load as load_predictor, predictor_dir

    path = predictor_dir(workdir, step, cett)
    return (load_predictor(path)[0], str(path)) if exists(path) else (None, str(path))


def trained(args, compare) -> None:
    wd, step, params, cett, thr = load(args.workdir, args.cett)
    graphdef, mesh, m = wd.run.graphdef, wd.run.mesh, wd.run.model_cfg
    dense_loss = sparse_pass(graphdef, params, wd.val, Sparsify()).loss
    sparse_loss = sparse_pass(graphdef, params, wd.val, threshold_sparsify(thr.threshold)).loss
    print(f"\n== trained: {args.workdir} step {step} ({m.activation}, d={m.d_model}, F={m.d_ff}, "
          f"L={m.num_layers}), PPL-1% CETT {cett:.5f}: thresholds {np.round(thr.threshold, 5).tolist()}, "
          f"sparsity {np.round(thr.sparsity, 4).tolist()}")
    print(f"validation PPL: dense {np.exp(dense_loss):.4f}, threshold mode {np.exp(sparse_loss):.4f} "
          f"(ratio {np.exp(sparse_loss - dense_loss):.5f})")
    modes = [("threshold", Sparsify(mode="threshold", threshold=np.asarray(thr.threshold, np.float32)))]
    pred, path = predictor_arrays(args.workdir, step, cett)
    rank = 0
    if pred is None:
        print(f"no trained predictors at {path} (`sparsity-jax predictor --workdir {args.workdir} --cett {cett:g}`):"
              f" predictor rows skipped")
    else:
        rank = int(pred["w1"].shape[-1])
        kept = records(graphdef, params, wd.val, threshold_sparsify(thr.threshold), "mask")
        pred = Sparsify(mode="predicted", predictor=PredictorSpec(pred["w1"], pred["w2"], pred.get("b")))
        cand = [c.reshape(-1, m.d_ff) for c in Decoder(graphdef, params, mesh, pred).candidates(
            wd.val[0])[1]]
        kept0 = records(graphdef, params, wd.val[:1], threshold_sparsify(thr.threshold), "mask", 10 ** 9)
        real = np.asarray(wd.val[0]["loss_weights"]).reshape(-1) > 0
        rec = [float((c[real] & k).sum() / max(k.sum(), 1)) for c, k in zip(cand, kept0)]
        print(f"predictors {path} (rank {rank}): recall of the kept neurons {np.round(rec, 4).tolist()}, predicted "
              f"share {np.round([c[real].mean() for c in cand], 4).tolist()}, kept share "
              f"{np.round([k.mean() for k in kept], 4).tolist()}")
        modes.append(("predicted", pred))
    inputs = records(graphdef, params, wd.val, Sparsify(), "inputs")
    rng = np.random.default_rng(0)
    for b in args.batches:
        pick = rng.choice(inputs[0].shape[0], b, replace=False)
        x_LxNxD = jnp.asarray(np.stack([x[pick] for x in inputs]))
        print(f"\n-- batch {b}")
        compare(graphdef, params, mesh, modes, wd.val, x_LxNxD, prompts_of(wd.val, b), b, args.block, args,
                gated=m.activation == "swiglu", rank=max(rank, 1), run=args.workdir)


def layout_table(workdirs: list[str], sizes=(8, 16, 32, 64, 128)) -> None:
    for workdir in workdirs:
        wd, step, params, cett, thr = load(workdir)
        m = wd.run.model_cfg
        masks = records(wd.run.graphdef, params, wd.val, threshold_sparsify(thr.threshold), "mask", 1024)
        print(f"\n== {workdir} step {step}: {m.activation}, d={m.d_model}, F={m.d_ff}, L={m.num_layers}, PPL-1% CETT "
              f"{cett:.5f}, {masks[0].shape[0]} validation tokens; block share before / after a layout at each b")
        print(format_table(affinity_table(masks, sizes, n_iter=20)), flush=True)

"""`sparsity-jax ssd`: the SSD report of an method.name=ssd run — PPL over training with
sparse phases, ARI, speed-ups — and sparse inference with k = 1 … N experts and dynamic
top-k (SSD §5.2 Fig. 4a, §5.3), optionally against a dense run MoEfied on the fly.

  sparsity-jax ssd --workdir SSD [--compare DENSE] [--k 1,2,4|all] [--drop-share 0.5,0.75]
"""
from __future__ import annotations

import json
import os

import jax

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("ssd", help="SSD report: PPL with sparse phases, ARI, speed-ups, sparse inference vs k")
    common.add_workdir(p, help="the SSD run")
    p.add_argument("--compare", default=None, help="a dense run of the same model, MoEfied for the PPL-vs-k curve")
    p.add_argument("--k", default=None, help="experts per token to evaluate, e.g. 1,2,4,6 or all (default: 1,2,4,…,N and K)")
    p.add_argument("--drop-share", default="0.75", help="dynamic top-k drop shares (SSD §5.3), e.g. 0.5,0.75; '' for none")
    p.add_argument("--experts", type=int, default=None, help="N (default: the SSD run's method.num_experts)")
    p.add_argument("--structure", default="auto", choices=("auto", "own", "moefy"),
                   help="SSD run's experts: own blocks (auto when it trained sparsely) or MoEfied afresh")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--seed", type=int, default=0, help="clustering key of on-the-fly MoEfication")
    p.add_argument("--output", default=None, help="report directory (default: WORKDIR/report)")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def sparse_inference(args, workdir: str, *, ks, drop_shares, structure: str, num_experts: int | None,
                     step: int | None = None) -> dict:
    """Validation PPL of one checkpoint (default: the latest) run as an MoE with each k in
    `ks` (None: `inference.default_ks`, "all": 1 … N) and with dynamic top-k; dense
    checkpoints (and any with structure="moefy") are MoEfied with a key from --seed.
    Checks k and the step before any evaluation. Returns a JSON-able dict."""
    from jax.sharding import NamedSharding, PartitionSpec

    from sparsity_jax.methods import trained_sparse
    from sparsity_jax.nn.sparsify import Sparsify
    from sparsity_jax.ssd import inference as inf

    plan = {}

    def check(settings, steps):
        n = int(num_experts or settings.method.num_experts)
        plan["n"] = n
        plan["ks"] = inf.check_ks(list(range(1, n + 1)) if ks == "all" else ks or inf.default_ks(n, settings.method.top_k), n)
        if step is not None and step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir}; available steps: {steps}.")

    wd = common.open_trained(args, check, workdir)
    try:
        s, n = wd.settings.method, plan["n"]
        step = wd.step(step)
        state, meta = wd.restore(step)
    finally:
        wd.close()
    sparse_trained = trained_sparse(meta)
    labels = state.get("ssd_labels") if n == s.num_experts else None
    params, centres, used = inf.inference_experts(
        state["params"], n, structure=structure, sparse_trained=sparse_trained, key=jax.random.key(args.seed),
        labels=labels, n_iter=s.kmeans_iters)
    params = jax.device_put(params, wd.run.param_shardings)
    centres = jax.device_put(centres, NamedSharding(wd.run.mesh, PartitionSpec()))
    evaluate = lambda p, sp: wd.run.evaluate(p, wd.val, sp)  # noqa: E731
    dense = evaluate(params, Sparsify())
    rows = inf.sweep(evaluate, params, centres, n, plan["ks"], drop_shares, seq_len=wd.settings.train.seq_len)
    common.log(f"{workdir} step {step} ({used} experts, N={n}): dense PPL {dense['perplexity']:.3f}; "
               + ", ".join(f"k={r['k']}" + (f"/drop {r['drop_share']:g}" if r["drop_share"] else "")
                           + f" {r['perplexity']:.3f}" for r in rows))
    return {"workdir": os.path.abspath(workdir), "step": step, "structure": used, "sparse_trained": sparse_trained,
            "num_experts": n, "ks": plan["ks"], "ari_threshold": s.ari_threshold,
            "train_top_k": s.top_k if sparse_trained else None, "dispatch": inf.default_dispatch(),
            "seq_len": wd.settings.train.seq_len,
            "dense": {"loss": float(dense["loss"]), "perplexity": float(dense["perplexity"])}, "rows": rows}


def _ks(text: str | None):
    """--k: None, 'all' or a list of ints."""
    if text is None or text.strip() == "all":
        return text and "all"
    return comma_list(text, int, "--k (integers in 1..N, or 'all')")


def run(args) -> int:
    from sparsity_jax.report.ssd_report import check_ssd_run, ssd_report
    from sparsity_jax.ssd.inference import check_drop_shares

    check_ssd_run(args.workdir)  # before any evaluation work
    if args.compare and not os.path.isdir(args.compare):
        raise UserError(f"--compare workdir {args.compare} does not exist; pass the workdir of a dense run.")
    shares = check_drop_shares(comma_list(args.drop_share, float, "--drop-share (numbers in [0, 1))",
                                          allow_empty=True))
    ks = _ks(args.k)
    common.init_distributed(args)
    ssd = sparse_inference(args, args.workdir, ks=ks, drop_shares=shares, structure=args.structure,
                           num_experts=args.experts, step=args.step)
    inference = {"SSD": ssd}
    if args.compare:  # the same N and ks as the SSD run
        inference["dense, MoEfied"] = sparse_inference(args, args.compare, ks=ssd["ks"], drop_shares=(),
                                                       structure="moefy", num_experts=ssd["num_experts"])
    out_dir = args.output or os.path.join(args.workdir, "report")
    if not common.is_main():
        return 0
    result = ssd_report(args.workdir, out_dir, inference=inference, compare=args.compare, tau=ssd["ari_threshold"])
    s = result["ssd"]
    common.log(f"wrote {out_dir}/ssd.json, ppl_over_training.png, ari.png, speedup.png, ppl_vs_k.png")
    common.log(f"sparse share {s['sparse_share']:.2f}, FLOPs speed-up {s['flops']['speedup'] or float('nan'):.3f}, "
               f"wall-clock speed-up (est.) {s['wall_clock'].get('run_speedup_vs_all_dense') or float('nan'):.3f}")
    for name, res in inference.items():
        common.log(f"{name} step {res['step']}: dense PPL {res['dense']['perplexity']:.3f}; "
                   + json.dumps({f"k={r['k']}" + (f"/drop{r['drop_share']:g}" if r["drop_share"] else ""):
                                 round(r["perplexity"], 3) for r in res["rows"]}))
    return 0

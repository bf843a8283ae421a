"""`sparsity-jax ssd`: the SSD report of an method.name=ssd run — PPL over training with
sparse phases, ARI, speed-ups — and sparse inference with k = 1 … N experts and dynamic
top-k (SSD §5.2 Fig. 4a, §5.3), optionally against a dense run MoEfied on the fly.

  sparsity-jax ssd --workdir SSD [--compare DENSE] [--k 1,2,4|all] [--drop-share 0.5,0.75]
"""
from __future__ import annotations

import json

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime.workdir import Workdir
from sparsity_jax.ssd import inference as inf
from sparsity_jax.workflows import ssd_inference

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
    """`workflows.ssd_inference.sparse_inference` of one workdir's checkpoint `step` (default: the
    latest) with each k in `ks` (None: `ssd.inference.default_ks`, "all": 1 … N); k, N and
    the step are checked before the model is built. Returns its JSON."""
    plan = {}

    def check(settings, steps):
        n = plan["n"] = int(num_experts or settings.method.num_experts)
        plan["ks"] = inf.check_ks(list(range(1, n + 1)) if ks == "all" else ks or inf.default_ks(n, settings.method.top_k), n)
        if step is not None and step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir}; available steps: {steps}.")

    wd = common.open_trained(args, check, workdir)
    try:
        r = ssd_inference.sparse_inference(wd, wd.step(step), wd.settings.method, num_experts=plan["n"], ks=plan["ks"],
                                           drop_shares=drop_shares, structure=structure, seed=args.seed)
    finally:
        wd.close()
    common.log(f"{workdir} step {r.step} ({r.structure} experts, N={r.num_experts}): dense PPL "
               f"{r.dense['perplexity']:.3f}; " + ", ".join(
                   f"k={q['k']}" + (f"/drop {q['drop_share']:g}" if q["drop_share"] else "") + f" {q['perplexity']:.3f}"
                   for q in r.rows))
    return r.to_json()


def _ks(text: str | None):
    """--k: None, 'all' or a list of ints."""
    if text is None or text.strip() == "all":
        return text and "all"
    return comma_list(text, int, "--k (integers in 1..N, or 'all')")


def run(args) -> int:
    # local: report loads matplotlib, which the CLI's start-up does without
    from sparsity_jax.report.ssd_report import check_ssd_run, ssd_report

    check_ssd_run(args.workdir)  # before any evaluation work
    if args.compare and not Workdir(args.compare).exists():
        raise UserError(f"--compare workdir {args.compare} does not exist; pass the workdir of a dense run.")
    shares = inf.check_drop_shares(comma_list(args.drop_share, float, "--drop-share (numbers in [0, 1))",
                                          allow_empty=True))
    ks = _ks(args.k)
    common.init_distributed(args)
    ssd = sparse_inference(args, args.workdir, ks=ks, drop_shares=shares, structure=args.structure,
                           num_experts=args.experts, step=args.step)
    inference = {"SSD": ssd}
    if args.compare:  # the same N and ks as the SSD run
        inference["dense, MoEfied"] = sparse_inference(args, args.compare, ks=ssd["ks"], drop_shares=(),
                                                       structure="moefy", num_experts=ssd["num_experts"])
    out_dir = args.output or Workdir(args.workdir).report
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

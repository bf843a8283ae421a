"""`sparsity-jax`: the one console script.

  sparsity-jax train    [--config FILE] [--workdir DIR] [--config.a.b=V ...]
  sparsity-jax evaluate --workdir DIR [--eval-batches N] [--config.a.b=V ...]
  sparsity-jax report   --workdir DIR [--compare DIR ...]
  sparsity-jax cett     --workdir DIR --cett 0.2 [--step N]
  sparsity-jax ppl      --workdir DIR --ppl-p 1,5,10
  sparsity-jax ssd      --workdir DIR [--compare DENSE_DIR] [--k 1,2,4|all] [--drop-share 0.5,0.75]
  sparsity-jax compare  [--workdir runs/compare] [--activations relu,relu2,silu,swiglu] [--p 1]

User errors (bad config key, impossible sizes, missing or unreadable checkpoints, empty
data) print one sentence and exit 2; a non-finite loss exits 3; nothing in the workdir
is overwritten by a failed start.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsity-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "train a model (resumes from the workdir's latest checkpoint)"),
                        ("evaluate", "evaluate every checkpoint in a workdir")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", default=None, help="config file (default: configs/default.py, or the workdir's for evaluate)")
        s.add_argument("--workdir", default=None, help="run directory (checkpoints, metrics.jsonl, tensorboard/)")
        s.add_argument("--coordinator", default=None, help="multi-process: coordinator host:port")
        s.add_argument("--num-processes", type=int, default=None)
        s.add_argument("--process-id", type=int, default=None)
        s.add_argument("--distributed", action="store_true", help="initialise jax.distributed from the environment (TPU pods)")
    rep = sub.add_parser("report", help="tables and figures from a run's metrics (hidden-unit use per layer, ...)")
    rep.add_argument("--workdir", required=True)
    rep.add_argument("--compare", nargs="*", default=[], help="other workdirs whose loss curves go on one figure")
    ssd = sub.add_parser("ssd", help="SSD report: PPL with sparse phases, ARI, speed-ups, sparse inference vs k")
    ssd.add_argument("--workdir", required=True, help="the SSD run")
    ssd.add_argument("--compare", default=None, help="a dense run of the same model, MoEfied for the PPL-vs-k curve")
    ssd.add_argument("--k", default=None, help="experts per token to evaluate, e.g. 1,2,4,6 or all (default: 1,2,4,…,N and K)")
    ssd.add_argument("--drop-share", default="0.75", help="dynamic top-k drop shares (SSD §5.3), e.g. 0.5,0.75; '' for none")
    ssd.add_argument("--experts", type=int, default=None, help="N (default: the SSD run's ssd.num_experts)")
    ssd.add_argument("--structure", default="auto", choices=("auto", "own", "moefy"),
                     help="SSD run's experts: own blocks (auto when it trained sparsely) or MoEfied afresh")
    ssd.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ssd.add_argument("--seed", type=int, default=0, help="clustering key of on-the-fly MoEfication")
    ssd.add_argument("--eval-batches", type=int, default=None)
    ssd.add_argument("--output", default=None, help="report directory (default: WORKDIR/report)")
    sub.add_parser("compare", add_help=False,
                   help="train tiny ReLU/ReLU²/SiLU/SwiGLU models, compare PPL-1%% sparsity and CETT curves "
                        "(`sparsity-jax compare --help`)")
    from sparsity_jax.search.commands import add_commands

    add_commands(sub)
    sub.choices["evaluate"].add_argument("--eval-batches", type=int, default=None)
    sub.choices["evaluate"].add_argument("--ppl-p", default=None,
                                         help="also PPL-p%% sparsity of every checkpoint, e.g. 1,5,10")
    sub.choices["evaluate"].add_argument("--output", default=None, help="JSON path (default: WORKDIR/eval.json)")
    return p


def _run(argv: list[str]) -> int:
    from sparsity_jax.config import apply_overrides, default_workdir, load_config, split_override_args

    import absl.logging  # orbax logs routine notices (read-only options, ...) as warnings

    absl.logging.set_verbosity(absl.logging.ERROR)
    if argv[:1] == ["compare"]:  # its own argument parser (sparsity_jax/search/compare.py)
        from sparsity_jax.search.compare import parse_args, run_compare

        run_compare(parse_args(argv[1:]))
        return 0
    rest, overrides = split_override_args(argv)
    args = _parser().parse_args(rest)
    if args.command == "report":
        return _report(args)
    if args.command == "ssd":
        return _ssd(args)
    if args.command in ("cett", "ppl"):
        from sparsity_jax.search.commands import run_command

        return run_command(args)
    from sparsity_jax.train import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    if args.command == "train":
        path = args.config or "configs/default.py"
        cfg = apply_overrides(load_config(path), overrides)
        workdir = args.workdir or default_workdir(path)
        from sparsity_jax.train.trainer import train

        summary = train(cfg, workdir)
        import jax

        from sparsity_jax.report.summary import print_summary

        if jax.process_index() == 0:
            print_summary(summary)
        return 0
    from sparsity_jax.train.evaluate import evaluate_workdir

    if not args.workdir:
        from sparsity_jax.errors import UserError

        raise UserError("evaluate needs --workdir DIR, the directory of a trained run")
    evaluate_workdir(args.workdir, config_path=args.config, overrides=overrides,
                     eval_batches=args.eval_batches, output=args.output)
    if args.ppl_p:
        from sparsity_jax.search.commands import ppl_workdir

        ppl_workdir(args.workdir, args.ppl_p, eval_batches=args.eval_batches)
    return 0


def _report(args) -> int:
    import json

    from sparsity_jax.report.layer_patterns import compare_losses, layer_patterns_report

    out_dir = os.path.join(args.workdir, "report")
    result = layer_patterns_report(args.workdir, out_dir)
    print(f"wrote {out_dir}/layer_patterns.{{json,md}} and use_over_training.png (steps {result['first_step']}..{result['last_step']})")
    if args.compare:
        runs = {os.path.basename(os.path.normpath(w)): w for w in [args.workdir, *args.compare]}
        cfg_path = os.path.join(args.workdir, "config.json")
        at = json.load(open(cfg_path)).get("unit_mask", {}).get("at_step") if os.path.isfile(cfg_path) else None
        finals = compare_losses(runs, os.path.join(out_dir, "loss_comparison.png"), at or None)
        print(f"wrote {out_dir}/loss_comparison.png; final training loss: "
              + ", ".join(f"{k} {v:.4f}" for k, v in finals.items()))
    return 0


def _ints(text: str | None):
    """--k: None, 'all' or a list of ints."""
    from sparsity_jax.errors import comma_list

    if text is None or text.strip() == "all":
        return text and "all"
    return comma_list(text, int, "--k (integers in 1..N, or 'all')")


def _ssd(args) -> int:
    import json

    from sparsity_jax.errors import UserError, comma_list
    from sparsity_jax.report.ssd_report import check_ssd_run, ssd_report
    from sparsity_jax.train.evaluate import sparse_inference_workdir

    check_ssd_run(args.workdir)  # before any evaluation work
    if args.compare and not os.path.isdir(args.compare):
        raise UserError(f"--compare workdir {args.compare} does not exist; pass the workdir of a dense run")
    shares = comma_list(args.drop_share, float, "--drop-share (numbers in [0, 1))", allow_empty=True)
    opts = dict(ks=_ints(args.k), eval_batches=args.eval_batches, seed=args.seed)
    ssd = sparse_inference_workdir(args.workdir, drop_shares=shares, step=args.step, structure=args.structure,
                                   num_experts=args.experts, **opts)
    inference = {"SSD": ssd}
    if args.compare:  # the same N and ks as the SSD run
        inference["dense, MoEfied"] = sparse_inference_workdir(
            args.compare, structure="moefy", num_experts=ssd["num_experts"], **dict(opts, ks=ssd["ks"]))
    out_dir = args.output or os.path.join(args.workdir, "report")
    result = ssd_report(args.workdir, out_dir, inference=inference, compare=args.compare, tau=ssd["ari_threshold"])
    s = result["ssd"]
    print(f"wrote {out_dir}/ssd.json, ppl_over_training.png, ari.png, speedup.png, ppl_vs_k.png")
    print(f"sparse share {s['sparse_share']:.2f}, FLOPs speed-up {s['flops']['speedup'] or float('nan'):.3f}, "
          f"wall-clock speed-up (est.) {s['wall_clock'].get('run_speedup_vs_all_dense') or float('nan'):.3f}")
    for name, res in inference.items():
        print(f"{name} step {res['step']}: dense PPL {res['dense']['perplexity']:.3f}; "
              + json.dumps({f"k={r['k']}" + (f"/drop{r['drop_share']:g}" if r["drop_share"] else ""):
                            round(r["perplexity"], 3) for r in res["rows"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from sparsity_jax.errors import NonFiniteLoss, UserError

    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except NonFiniteLoss as e:
        print(f"sparsity-jax: stopped: {e}; the last good checkpoint is kept", file=sys.stderr)
        return 3
    except UserError as e:
        print(f"sparsity-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsity-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

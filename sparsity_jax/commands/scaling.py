"""`sparsity-jax scaling`: activation-ratio scaling fits (Sparsing Law §4.2, App. D).

  sparsity-jax scaling --builtin [--output DIR]             Table 2 and Fig. 4 from the paper's curves
  sparsity-jax scaling --workdirs A,B [--form auto] [--curve ppl1|cett0] [--drop-warmup] [--output DIR]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError, comma_list
from sparsity_jax.runtime.workdir import Workdir, as_path, write_text

TAKES_CONFIG = False


def add_parser(sub) -> None:
    p = sub.add_parser("scaling", help="fit the activation ratio against training tokens (Sparsing Law §4)")
    p.add_argument("--builtin", action="store_true", help="the paper's 11 released curves: Table 2 and Fig. 4")
    p.add_argument("--workdirs", default=None, help="evaluated runs (sparsity-jax evaluate), e.g. runs/a,runs/b")
    p.add_argument("--form", default="auto", choices=("auto", "relu", "silu"), help="law to fit (auto: by AIC)")
    p.add_argument("--curve", default="ppl1", help="ppl<p> (activation ratio at PPL-p%%) or cett0 (a != 0)")
    p.add_argument("--drop-warmup", action="store_true", help="leave out the checkpoints inside the warm-up")
    p.add_argument("--output", default=None,
                   help="directory (default: workdirs/scaling_builtin, WORKDIR/report for one run, "
                        "workdirs/scaling for several)")


def builtin(out_dir) -> dict:
    # local: scaling loads scipy and matplotlib, which the CLI's start-up does without
    from sparsity_jax.scaling import builtin_table, fit_builtin, format_table
    from sparsity_jax.scaling.plots import plot_builtin
    from sparsity_jax.scaling.runs import fit_json

    out_dir = as_path(out_dir)
    fits = fit_builtin()
    rows = builtin_table(fits)
    table = format_table(rows)
    print(table)
    paths = plot_builtin(out_dir, fits)
    out = {"curves": {r["name"]: {**fit_json(fits[r["name"]]), "paper_params": r["paper_params"],
                                  "paper_mae": r["paper_mae"]} for r in rows}}
    common.write_json(out_dir / "scaling_builtin.json", out)
    write_text(out_dir / "table2.md", "# Sparsing Law Table 2, refitted from the released curves\n\n```\n" + table + "\n```\n")
    print("wrote " + ", ".join([*paths, str(out_dir / "scaling_builtin.json"), str(out_dir / "table2.md")]))
    return out


def runs(workdirs: list[Workdir], out_dir, *, form: str, curve: str, drop_warmup: bool) -> dict:
    # local: scaling loads scipy and matplotlib, which the CLI's start-up does without
    from sparsity_jax.scaling.plots import plot_activation_curves
    from sparsity_jax.scaling.runs import fit_json, fit_run

    names = [w.name for w in workdirs]
    if len(set(names)) < len(names):
        raise UserError(f"two workdirs share a name in {names}; rename or link one so the curves can be told apart.")
    fitted = {name: fit_run(w, curve, form, drop_warmup) for name, w in zip(names, workdirs)}
    out = {"curve": curve, "runs": {}}
    for name, (pts, fit) in fitted.items():
        out["runs"][name] = {**fit_json(fit), "tokens": pts["tokens"].tolist(), "ratio": pts["ratio"].tolist()}
        p = fit.params
        print(f"{name}: {fit.form} fit, A0 {p['A0']:.4f} ± {fit.stderr['A0']:.4f}, alpha {p['alpha']:.3f}, "
              f"c {p['c']:.3g}" + (f", b {p['b']:.3f}" if "b" in p else "")
              + f"; MAE {fit.mae:.2e} on {fit.n_points} points ({fit.dropped} warm-up points dropped); "
              f"AIC {', '.join(f'{k} {v:.1f}' for k, v in fit.aics.items())}")
    out_dir = as_path(out_dir)
    png = plot_activation_curves({n: (pts["tokens"], pts["ratio"]) for n, (pts, _) in fitted.items()},
                                 {n: fit for n, (_, fit) in fitted.items()}, out_dir / "scaling.png")
    common.write_json(out_dir / "scaling.json", out)
    print(f"wrote {png}, {out_dir / 'scaling.json'}")
    return out


def run(args) -> int:
    if args.builtin == bool(args.workdirs):
        raise UserError("Pass either --builtin or --workdirs A,B (evaluated runs).")
    if args.builtin:
        builtin(args.output or "workdirs/scaling_builtin")
        return 0
    workdirs = [Workdir(w) for w in comma_list(args.workdirs, str, "--workdirs")]
    for w in workdirs:
        if not w.exists():
            raise UserError(f"workdir {w} does not exist; pass evaluated runs.")
    out_dir = args.output or (workdirs[0].report if len(workdirs) == 1 else "workdirs/scaling")
    runs(workdirs, out_dir, form=args.form, curve=args.curve, drop_warmup=args.drop_warmup)
    return 0

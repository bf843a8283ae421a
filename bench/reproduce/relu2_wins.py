"""Reproduce *ReLU² Wins* — Table 1's four aspects for ReLU, ReLU², SwiGLU and SiLU:
performance and sparsity at PPL-1% (§5.1, Fig. 3a), predictivity (§5.2, Fig. 5), reuse
ratio (§5.3, Fig. 6) and the top-average co-activation gap (§5.3, Fig. 7).

    python bench/reproduce/relu2_wins.py --scale cpu      # `sparsity-jax compare` once per seed
    python bench/reproduce/relu2_wins.py --scale paper    # 1.3B configs: dry run + launch lines

Why this CPU config. The comparison needs models that (a) are parameter-matched across
activations (App. A.3: gated F = 0.65625 × non-gated F; configs/relu2/tiny.py: F 512 / 336)
and (b) train far enough that the activation functions differ in sparsity (at init every
ReLU model has ~50% zeros). configs/relu2/tiny.py (4 × 128, 300 steps of 32 × 128 tokens)
did that on one seed in ~10–15 min; to fit 3 seeds × 4 models on a shared 2-core machine we
keep the shape, take a quarter of the batch (8 × 128) and 2/3 of the steps (200) — the data
of 50 of the original steps — and train the predictors 50 steps. The paper's 1B models were
trained on 100B+ tokens: CETT_p is 0.07–0.11 here, not ≈ 0.2 (these tiny models are more
sensitive to truncation), which moves every aspect to denser operating points.
The paper's text states its Table 1 numbers garbled (shared/seeds/relu2_wins.txt); its
claims are rankings, which is what we test: ReLU² first in sparsity, predictivity, reuse
and co-activation gap; ReLU variants' gap above SwiGLU's; SwiGLU (then ReLU²) the best PPL.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

CONFIG, PAPER_CFG = "configs/relu2/tiny.py", "configs/relu2/1p3b.py"
ACTS = ("relu", "relu2", "swiglu", "silu")
NAMES = {"relu": "ReLU", "relu2": "ReLU²", "swiglu": "SwiGLU", "silu": "SiLU"}
COLORS = {"relu": "tab:blue", "relu2": "tab:red", "swiglu": "tab:green", "silu": "tab:gray"}
CETTS = "0,0.05,0.1,0.2,0.4"


def overrides(seed: int, steps: int) -> dict:
    return {"seed": seed, "data.seed": seed, "train.global_batch_size": 8, "train.steps": steps,
            "train.eval_every": steps, "train.checkpoint_every": steps, "train.eval_batches": 4,
            "optimizer.warmup_steps": 20}


def column(r: dict) -> dict:
    a = r.get("aspects", {})
    act = r["ppl_p"]["activation_ratio"]
    return {"dense_ppl": r["dense_ppl"], "cett_p": r["ppl_p"]["target_cett"], "sparsity": r["ppl_p"]["sparsity"],
            "recall": a.get("recall"), "prediction_sparsity": a.get("prediction_sparsity"),
            "reuse_w1": a.get("reuse_w1"), "reuse_w8": a.get("reuse_w8"), "reuse_lift": a.get("reuse_w1", 0) / act,
            "coactivation_gap": a.get("coactivation_gap")}


def first(cols: dict, key: str, act: str = "relu2", low: bool = False) -> bool:
    """Is `act` the best of the four on `key` (highest, or lowest with `low`)?"""
    vals = {a: cols[a][key] for a in ACTS}
    best = min(vals, key=vals.get) if low else max(vals, key=vals.get)
    return best == act


def cpu(out: C.Output, args) -> None:
    steps = args.steps or 200
    res = {}
    for s in args.seeds:
        root = out.runs / f"seed{s}"
        out.sh(["compare", "--workdir", root, "--config", CONFIG, "--cetts", CETTS, "--predictor-steps", "50",
                *C.flags(overrides(s, steps))], skip_if=root / "compare.json")
        models = json.loads((root / "compare.json").read_text())["models"]
        res[s] = {a: column(models[a]) for a in ACTS}
    seeds = args.seeds
    keys = ("dense_ppl", "cett_p", "sparsity", "recall", "prediction_sparsity", "reuse_w1", "reuse_w8", "reuse_lift",
            "coactivation_gap")
    vals = {a: {k: [res[s][a][k] for s in seeds] for k in keys} for a in ACTS}
    table = C.md_table(["activation", *keys], [[NAMES[a], *(C.pm(vals[a][k]) for k in keys)] for a in ACTS])
    cmd = "python bench/reproduce/relu2_wins.py --scale cpu"
    ranking = lambda k, low=False: (" < " if low else " > ").join(  # noqa: E731
        NAMES[a] for a in sorted(ACTS, key=lambda a: C.mean_std(vals[a][k])[0], reverse=not low))
    F = []
    order = ("relu2", "relu", "swiglu", "silu")
    F.append(C.Finding(
        "ReLU² §5.1 Fig. 3a: ReLU² is the sparsest at PPL-1%", "ReLU² highest sparsity of the four",
        f"{ranking('sparsity')}: ReLU² {C.pm(vals['relu2']['sparsity'])}",
        C.verdict([first(res[s], "sparsity") for s in seeds], [not first(res[s], "sparsity") for s in seeds]), cmd,
        "rule: ReLU²'s sparsity at PPL-1% is the highest of the four in every seed", len(seeds)))
    F.append(C.Finding(
        "ReLU² Fig. 3a / Sparsing Law Fig. 3: sparsity at PPL-1% ranks ReLU² > ReLU > SwiGLU ≫ SiLU",
        "ReLU² > ReLU > SwiGLU ≫ SiLU (SiLU activation ratio ≈ 40%, ReLU ≈ 6–8%: Sparsing Law Table 2 A0)",
        ", ".join(f"{NAMES[a]} {C.pm(vals[a]['sparsity'])}" for a in order),
        C.verdict([all(res[s][a]["sparsity"] > res[s][b]["sparsity"] for a, b in zip(order, order[1:])) for s in seeds],
                  [res[s]["relu"]["sparsity"] > res[s]["relu2"]["sparsity"] for s in seeds]),
        cmd, f"rule: the full order in every seed; CETT_p {', '.join(NAMES[a] + ' ' + C.pm(vals[a]['cett_p']) for a in order)}",
        len(seeds)))
    aspects = [("prediction_sparsity", "§5.2 Fig. 5: ReLU² has the highest predictivity (prediction sparsity at ~equal recall)",
                "ReLU² highest recall and prediction sparsity"),
               ("reuse_lift", "§5.3 Fig. 6: ReLU² reuses the most neurons at a given activation ratio "
                              "(reuse w=1 / activation ratio)", "ReLU² curve above the others"),
               ("coactivation_gap", "§5.3 Fig. 7: ReLU² has the largest top-average co-activation gap",
                "ReLU variants ≈ 0.5–0.6 above SwiGLU; ReLU² above ReLU after layer 8")]
    for key, name, paper in aspects:
        holds = [first(res[s], key) for s in seeds]
        rivals = [max((a for a in ACTS if a != "relu2"), key=lambda a: res[s][a][key]) for s in seeds]
        F.append(C.Finding(
            f"ReLU² {name}", paper, f"{ranking(key)}: " + ", ".join(f"{NAMES[a]} {C.pm(vals[a][key])}" for a in order),
            C.verdict(holds, [not h for h in holds]), cmd,
            f"best other per seed: {[NAMES[r] for r in rivals]}; ReLU² minus it per seed: "
            f"{[round(res[s]['relu2'][key] - res[s][r][key], 4) for s, r in zip(seeds, rivals)]}; activation ratio at "
            f"PPL-1%: " + ", ".join(f"{NAMES[a]} {C.pm([1 - v for v in vals[a]['sparsity']])}" for a in order)
            + "; predictor recall: " + ", ".join(f"{NAMES[a]} {C.pm(vals[a]['recall'])}" for a in order), len(seeds)))
    F.append(C.Finding(
        "ReLU² §5.3 Fig. 7: ReLU variants have a larger co-activation gap than SwiGLU", "≈ 0.5–0.6 vs lower for SwiGLU",
        f"min(ReLU, ReLU²) {C.pm([min(res[s]['relu']['coactivation_gap'], res[s]['relu2']['coactivation_gap']) for s in seeds])}"
        f" vs SwiGLU {C.pm(vals['swiglu']['coactivation_gap'])}",
        C.verdict([min(res[s]["relu"]["coactivation_gap"], res[s]["relu2"]["coactivation_gap"]) >
                   res[s]["swiglu"]["coactivation_gap"] for s in seeds]), cmd, "", len(seeds)))
    F.append(C.Finding(
        "ReLU² §5.4: SwiGLU has the best dense performance (ReLU² close)", "SwiGLU best; ReLU² within the margin",
        f"dense PPL {ranking('dense_ppl', low=True)}: "
        + ", ".join(f"{NAMES[a]} {C.pm(vals[a]['dense_ppl'])}" for a in order),
        C.verdict([first(res[s], "dense_ppl", "swiglu", low=True) for s in seeds]), cmd,
        "rule: SwiGLU's dense validation PPL is the lowest in every seed", len(seeds)))
    out.write(F, {"The four aspects at PPL-1% (mean ± std over seeds)": table}, {"per_seed": res, "seeds": seeds})
    figures(out, vals, seeds, res)


def figures(out, vals, seeds, res) -> None:
    plt = C.pyplot()
    keys = (("sparsity", "sparsity at PPL-1%"), ("prediction_sparsity", "prediction sparsity"),
            ("reuse_lift", "reuse w=1 / activation ratio"), ("coactivation_gap", "co-activation gap"))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    for ax, (k, title) in zip(axes, keys):
        ms = [C.mean_std(vals[a][k]) for a in ACTS]
        ax.bar(range(4), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=4,
               color=[COLORS[a] for a in ACTS])
        for i, a in enumerate(ACTS):
            ax.plot([i] * len(seeds), vals[a][k], "k.", ms=4)
        ax.set_xticks(range(4), [NAMES[a] for a in ACTS])
        ax.set_title(title)
    fig.suptitle(f"ReLU² Wins Table 1 aspects, tiny models, mean ± std over {len(seeds)} seeds (dots: seeds)")
    C.save(fig, out, "four_aspects.png")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for a in ACTS:
        curves = [json.loads((out.runs / f"seed{s}" / "compare.json").read_text())["models"][a]["curve"] for s in seeds]
        C.errorbars(ax, curves[0]["target_cett"], [c["sparsity"] for c in curves], NAMES[a], color=COLORS[a])
    ax.set(xlabel="CETT", ylabel="sparsity", title="sparsity vs CETT (ReLU² Fig. 3a)")
    ax.legend()
    C.save(fig, out, "cett_vs_sparsity.png")


def paper(out: C.Output, args) -> None:
    runs = [(a, f"{PAPER_CFG}:{a}", {}) for a in ("relu2", "swiglu", "relu", "silu")]
    pod = " ".join(C.flags(C.POD))
    after = [f"compare --config {PAPER_CFG} --variants relu,relu2,silu,swiglu --workdir BUCKET_RUNS --p 1 "
             f"--predictor-steps 1000 {pod}"]
    # relu and silu share relu2's shape (F 8192); swiglu is parameter-matched (F 5376)
    C.paper_scale(out, runs, after, args.topology, dry=["relu2"])


if __name__ == "__main__":
    a = C.parse(__doc__)
    o = C.Output("relu2_wins", a)
    (cpu if a.scale == "cpu" else paper)(o, a)
    o.done()

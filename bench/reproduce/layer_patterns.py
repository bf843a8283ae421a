"""Reproduce *Layer-dependent activation sparsity in ReLU Transformers* (W&A) — Table 1,
Table 2's first column, §4.1 (dead-unit vs random masking) and §5.2 / Fig. 3 (width).

    python bench/reproduce/layer_patterns.py --scale cpu     # trains (or reuses) runs/reproduce/layer_patterns
    python bench/reproduce/layer_patterns.py --scale paper   # dry run on a TPU slice + launch lines

Why this CPU config. Per-batch use (#units > 0 anywhere in the per-device batch, W&A §2.1)
can only fall below 100% when F is much larger than the tokens in a batch: with a
per-token use a and N tokens, a unit used at random would be missed by the whole batch with
probability (1 − a)^N ≈ 0. The paper has F = 32768 and 8192-token batches (F/N = 4, with
highly specialised units); the old tiny config (F = 1024, 4096 tokens, F/N = 0.25) had 100%
per-batch use everywhere. Here: 6 layers (the paper's depth), d = 64, F = 4096 and batches
of 8 × 64 = 512 tokens, so F/N = 8 (the lead's "F ≥ 8 × tokens per batch"), LeCun-normal
MLP init, ReLU, AdamW, cosine schedule with warm-up to 3e-3 as in W&A §2.2; 200 steps
(about a minute per run on 2 loaded cores). The width sweep (Fig. 3: F = 8192 / 16384 /
32768) becomes F = 1024 / 2048 / 4096 at the same N (F/N = 2 / 4 / 8). Masking (§4.1:
at step 50k of 1M, the units unused in the current batch) is at step 50 of 200 with a
window of one batch; the control masks as many random units per layer.
What the paper's regime still needs that 200 steps cannot give: its layer-0 collapse
(13.3% per batch) comes from units turning off after the high-LR phase (Fig. 1, after
~8000 steps); the output prints per-batch use against F/N and the random-use expectation.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

TINY, MASKING, PAPER_CFG = "configs/layer_patterns/tiny.py", "configs/layer_patterns/masking.py", "configs/layer_patterns/paper.py"
# W&A Table 1 (per-token / per-sequence / per-batch %, layers 0–5) and Table 2 (on in batch 0 %)
PAPER_T1 = {"per-token": [4.1, 6.8, 7.1, 6.4, 2.6, 3.0], "per-sequence": [12.2, 71.7, 58.8, 54.2, 50.7, 58.0],
            "per-batch": [13.3, 79.3, 71.0, 73.0, 86.1, 95.6]}
PAPER_ON_FIRST = [97.0, 93.2, 90.9, 89.0, 88.2, 87.5]
WIDTHS, F_MAIN, BATCH, SEQ, STEPS, MASK_AT = (1024, 2048, 4096), 4096, 8, 64, 200, 50
USE = (("per-token", "activation_ratio"), ("per-sequence", "use_per_sequence"), ("per-batch", "use_per_batch"))


def overrides(seed: int, d_ff: int, steps: int) -> dict:
    return {"seed": seed, "data.seed": seed, "model.d_model": 64, "model.num_heads": 4, "model.d_ff": d_ff,
            "train.global_batch_size": BATCH, "train.seq_len": SEQ, "train.steps": steps, "train.log_every": 40,
            "train.eval_every": steps, "train.checkpoint_every": steps, "train.metrics_every": 20,
            "optimizer.warmup_steps": 24}


def last_units(wd) -> dict:
    return C.metrics(wd)["units"][-1]


def cpu(out: C.Output, args) -> None:
    steps = args.steps or STEPS
    mask_at = max(1, steps * MASK_AT // STEPS)
    runs = {}
    for s in args.seeds:
        for f in WIDTHS:
            runs[("none", f, s)] = wd = out.runs / f"F{f}_s{s}"
            out.train(TINY, wd, overrides(s, f, steps))
        for kind in ("dead", "random"):
            runs[(kind, F_MAIN, s)] = wd = out.runs / f"mask_{kind}_s{s}"
            out.train(f"{MASKING}:{kind}", wd, {**overrides(s, F_MAIN, steps), "unit_mask.at_step": mask_at,
                                                "unit_mask.window": 1})
    seeds, n_tok = args.seeds, BATCH * SEQ
    main = {s: last_units(runs[("none", F_MAIN, s)]) for s in seeds}
    L = len(main[seeds[0]]["use_per_batch"])
    use = {name: [[100 * v for v in main[s][key]] for s in seeds] for name, key in USE}
    first = [[100 * v for v in main[s]["on_in_first"]] for s in seeds]
    pb = use["per-batch"]
    # what a unit used independently at its per-token rate a would give per batch: 1 − (1 − a)^N
    rand = [[100 * (1 - (1 - a / 100) ** n_tok) for a in use["per-token"][i]] for i in range(len(seeds))]
    rows = [[layer, *(f"{C.pm([u[i][layer] for i in range(len(seeds))], 1)} ({PAPER_T1[n][layer]})" for n, u in use.items()),
             C.pm([r[layer] for r in rand], 1), f"{C.pm([f_[layer] for f_ in first], 1)} ({PAPER_ON_FIRST[layer]})"]
            for layer in range(L)]
    t1 = C.md_table(["layer", "per-token % (paper)", "per-sequence % (paper)", "per-batch % (paper)",
                     "per-batch % if units fired at random", "on in batch 0 % (paper)"], rows)
    findings, cmd = [], "python bench/reproduce/layer_patterns.py --scale cpu"
    min_pb = min(min(p) for p in pb)
    regime = min_pb < 90.0
    tok = [min(p) for p in use["per-token"]], [max(p) for p in use["per-token"]]
    why = (f"per-batch use is ≥ {min_pb:.1f}% in every layer and seed although F/N = {F_MAIN}/{n_tok} = "
           f"{F_MAIN // n_tok}: per-token use is {min(tok[0]):.0f}–{max(tok[1]):.0f}% here vs the paper's 2.6–7.1%, and a "
           f"unit firing on a share a of tokens misses a whole {n_tok}-token batch with probability (1 − a)^N ≈ 0 (the "
           f"'if units fired at random' column: {min(min(r) for r in rand):.1f}%). Per-batch use falls only when units "
           f"die for every token, which W&A see after ~8k steps at LR 3e-3 (Fig. 1, Table 2 'turned off'); this run has "
           f"{steps} steps, so it would need ~10⁴ steps at this width (and F ≫ N, which it has)")
    findings.append(C.Finding(
        "W&A Table 1: layer 0 uses fewer units per batch than the last layer", "13.3% vs 95.6%",
        f"{C.pm([p[0] for p in pb], 1)}% vs {C.pm([p[-1] for p in pb], 1)}% (d 64, F {F_MAIN}, {n_tok}-token batches)",
        C.verdict([p[0] < p[-1] for p in pb], [p[0] > p[-1] for p in pb], regime,
                  f"per-batch use ≥ {min_pb:.1f}% in every layer: no unit has died in {steps} steps (per-token use "
                  f"{min(tok[0]):.0f}–{max(tok[1]):.0f}% vs the paper's 2.6–7.1%); needs ~10⁴ steps"), cmd,
        f"per-batch use per layer {[[round(v, 1) for v in p] for p in pb]} (one list per seed); argmin layer "
        f"{[p.index(min(p)) for p in pb]}, argmax layer {[p.index(max(p)) for p in pb]}; " + why, len(seeds)))
    findings.append(C.Finding(
        "W&A Table 2: at initialisation deeper layers use fewer units in the first batch", "97.0% → 87.5% (monotone)",
        f"layer 0 {C.pm([f_[0] for f_ in first], 1)}% → layer {L - 1} {C.pm([f_[-1] for f_ in first], 1)}%",
        C.verdict([all(a >= b for a, b in zip(f_, f_[1:])) for f_ in first],
                  [all(a < b for a, b in zip(f_, f_[1:])) for f_ in first]), cmd,
        "rule: on-in-batch-0 non-increasing over layers in every seed", len(seeds)))
    # masking (§4.1)
    loss = {k: [C.metrics(runs[(k, F_MAIN, s)])["eval"][-1]["loss"] for s in seeds] for k in ("none", "dead", "random")}
    masked = [100 * sum(last_units(runs[("dead", F_MAIN, s)]).get("masked_fraction", [0])) /
              L for s in seeds]
    tol = [0.01 * n for n in loss["none"]]  # 1% of the seed's own unmasked loss (seeds differ in data too)
    holds = [r - d > t and abs(d - n) < t for n, d, r, t in zip(loss["none"], loss["dead"], loss["random"], tol)]
    mregime = min(masked) >= 20.0  # the paper masked ~30%; a random mask of a few % cannot collapse anything
    findings.append(C.Finding(
        "W&A §4.1: masking the units dead in a batch costs nothing; a random mask of the same size collapses",
        "~30% of units masked at step 50k: no difference vs unmasked; random: collapse",
        f"val loss none {C.pm(loss['none'])}, dead {C.pm(loss['dead'])}, random {C.pm(loss['random'])}; "
        f"masked {C.pm(masked, 1)}% of units",
        C.verdict(holds, [r <= d for d, r in zip(loss["dead"], loss["random"])], mregime,
                  f"only {C.pm(masked, 1)}% of units are unused in the batch at step {mask_at} (paper ~30%)"),
        cmd, "units have not died yet (Table 1 row), so both masks remove too little to matter; rule, per seed (paired: same data and init): random − dead > 1% of the unmasked loss and "
             "|dead − none| < 1%; the regime needs ≥ 20% of units masked; "
             f"masked share per seed {[round(m, 1) for m in masked]}%", len(seeds)))
    # width (§5.2, Fig. 3): mean over layers, per F
    wid = {name: {f: [sum(last_units(runs[('none', f, s)])[key]) / L * 100 for s in seeds] for f in WIDTHS}
           for name, key in USE}
    for name in ("per-token", "per-batch"):
        per_seed = [[wid[name][f][i] for f in WIDTHS] for i in range(len(seeds))]
        findings.append(C.Finding(
            f"W&A Fig. 3: wider models use a smaller fraction of units {name}", "falls from F = 8192 to 32768",
            " → ".join(f"F {f}: {C.pm(wid[name][f], 1)}%" for f in WIDTHS),
            C.verdict([all(a > b for a, b in zip(p, p[1:])) for p in per_seed],
                      [all(a < b for a, b in zip(p, p[1:])) for p in per_seed],
                      name == "per-token" or min(min(p) for p in per_seed) < 90,
                      f"per-batch use ≥ 90% at every width (F/N = {WIDTHS[0] / n_tok:g}–{WIDTHS[-1] / n_tok:g})"),
            cmd, "rule: strictly falling with F in every seed (mean over layers)", len(seeds)))
    tw = C.md_table(["F", "F / tokens per batch", *(f"{n} % (mean over layers)" for n, _ in USE)],
                    [[f, f / n_tok, *(C.pm(wid[n][f], 1) for n, _ in USE)] for f in WIDTHS])
    tm = C.md_table(["run", "final val loss", "masked %"],
                    [["no mask", C.pm(loss["none"], 4), "0"], ["dead units", C.pm(loss["dead"], 4), C.pm(masked, 1)],
                     ["random units", C.pm(loss["random"], 4), "same count"]])
    out.write(findings, {"Table 1 at convergence (F = 4096; paper in parentheses)": t1,
                         "Width sweep (Fig. 3)": tw, "Masking (§4.1)": tm},
              {"use": use, "on_in_first": first, "random_per_batch": rand, "loss": loss, "masked": masked,
               "width": wid, "seeds": seeds, "tokens_per_batch": n_tok})
    figures(out, runs, seeds, use, wid, L)


def figures(out, runs, seeds, use, wid, L) -> None:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (name, _) in zip(axes, USE):
        C.errorbars(ax, range(L), use[name], f"ours (F {F_MAIN}, mean ± std, {len(seeds)} seeds)")
        ax.plot(range(L), PAPER_T1[name], "s--", color="gray", label="paper Table 1 (F 32768)")
        ax.set(title=f"{name} use at the end of training", xlabel="layer", ylabel="% of F", ylim=(0, 105))
        C.integer_axis(ax)
    axes[0].legend(fontsize=8)
    C.save(fig, out, "table1_use_per_layer.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layer in range(L):
        recs = [C.metrics(runs[("none", F_MAIN, s)])["units"] for s in seeds]
        steps = [r["step"] for r in recs[0]]
        ax.plot(steps, [100 * sum(rs[i]["use_per_batch"][layer] for rs in recs) / len(recs) for i in range(len(steps))],
                label=f"layer {layer}")
    ax.set(title=f"per-batch use over training (mean of {len(seeds)} seeds)", xlabel="step", ylabel="% of F")
    ax.legend(fontsize=8)
    C.save(fig, out, "per_batch_use_over_training.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in ("none", "dead", "random"):
        curves = [[r["loss"] for r in C.metrics(runs[(kind, F_MAIN, s)])["train"]] for s in seeds]
        steps = [r["step"] for r in C.metrics(runs[(kind, F_MAIN, seeds[0])])["train"]]
        n = min(len(c) for c in curves)
        C.errorbars(ax, steps[:n], [c[:n] for c in curves], {"none": "no mask", "dead": "dead-unit mask",
                                                              "random": "random mask"}[kind])
    ax.axvline(MASK_AT, color="gray", ls=":", label=f"mask applied (step {MASK_AT})")
    ax.set(title=f"dead-unit vs random masking (W&A §4.1), mean ± std of {len(seeds)} seeds", xlabel="step",
           ylabel="training loss")
    ax.legend()
    C.save(fig, out, "masking_loss.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, _ in USE:
        C.errorbars(ax, WIDTHS, [[wid[name][f][i] for f in WIDTHS] for i in range(len(seeds))], name)
    ax.set_xscale("log", base=2)
    ax.set(title="use vs FFN width (W&A Fig. 3), mean over layers", xlabel="F (tokens per batch: 512)", ylabel="% of F")
    ax.set_xticks(WIDTHS, [str(f) for f in WIDTHS])
    ax.minorticks_off()
    ax.legend()
    C.save(fig, out, "width_sweep.png")


def paper(out: C.Output, args) -> None:
    # the 1M-step config as written, with the use metrics every 500 steps over batches of 16 × 512 =
    # 8192 tokens (W&A's per-device batch: 128 sequences in 8 groups); masking adds unit_mask
    # (at 50k of 1M steps, one batch)
    use = {"train.metrics_every": 500, "train.metrics_batch_groups": 8}
    dead = {**use, "unit_mask.at_step": 50_000, "unit_mask.window": 1}
    runs = [("table1", PAPER_CFG, use), ("mask_dead", PAPER_CFG, dead),
            ("mask_random", PAPER_CFG, {**dead, "unit_mask.random": "true"}),
            *((f"width_F{f}", PAPER_CFG, {**use, "model.d_ff": f}) for f in (8192, 16384))]
    C.paper_scale(out, runs, ["report --workdir BUCKET_RUNS/table1",
                              "report --workdir BUCKET_RUNS/mask_dead --compare BUCKET_RUNS/mask_random"],
                  args.topology, dry=["table1"])


if __name__ == "__main__":
    a = C.parse(__doc__)
    o = C.Output("layer_patterns", a)
    (cpu if a.scale == "cpu" else paper)(o, a)
    o.done()

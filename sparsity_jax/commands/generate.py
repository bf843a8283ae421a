"""`sparsity-jax generate`: KV-cache decoding of a trained run with a dense or sparse FFN
(`infer/`), on the run's mesh (the FFN tensor-parallel over `mlp` where the mesh has a
tensor axis; `--config.mesh.tensor=N` picks another). Prints each row's text, then the
decode tokens/s, per layer the active-neuron share, the union and block-active shares
of a step and the budget overflows.

`--layout coactivation` first permutes each layer's neurons so that the ones the chooser
picks together on validation tokens sit in contiguous blocks of `--block` (issue 22,
`infer.layout`; the model's function is unchanged), then decodes with block gathers;
`--block` alone gathers blocks of the unpermuted layout.

  sparsity-jax generate --workdir RUN --prompt TEXT [--prompt TEXT ...] [--max-new 64]
      [--ffn dense|threshold|predicted] [--cett 0.2] [--batch B] [--temperature 0]
      [--top-p 1] [--seed 0] [--step S] [--margin 0.1] [--eval-batches N]
      [--layout none|coactivation] [--block 32] [--kernel auto|xla|tpu|gpu]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError
from sparsity_jax.runtime.workdir import Workdir

TAKES_CONFIG = True
FFNS = ("dense", "threshold", "predicted")
LAYOUTS = ("none", "coactivation")


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="KV-cache decoding with a dense or sparse FFN; tokens/s and active shares")
    common.add_workdir(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several rows)")
    p.add_argument("--max-new", type=int, default=64, help="tokens generated per row")
    p.add_argument("--ffn", choices=FFNS, default="dense",
                   help="dense; threshold: skip |a_i|·‖W_out,i‖ < t_l at --cett; predicted: the trained predictors choose")
    p.add_argument("--cett", type=float, default=0.2, help="CETT of the thresholds / of the predictors' labels")
    p.add_argument("--batch", type=int, default=None, help="rows (default: one per prompt; prompts are cycled)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--margin", type=float, default=0.1, help="neuron budgets: measured quantiles × (1 + margin)")
    p.add_argument("--layout", choices=LAYOUTS, default="none",
                   help="coactivation: permute neurons so co-chosen ones share blocks of --block (function unchanged)")
    p.add_argument("--block", type=int, default=None,
                   help="gather whole blocks of this many neurons (default: 32 with --layout coactivation, else 0)")
    p.add_argument("--kernel", choices=("auto", "xla", "tpu", "gpu"), default="auto",
                   help="block-gather implementation (auto: Pallas on TPU / GPU, XLA on CPU)")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def check_args(args) -> None:
    from sparsity_jax.search.thresholds import check_cett

    check_cett(args.cett)
    if args.max_new <= 0:
        raise UserError(f"Pass --max-new ≥ 1 (tokens to generate); got {args.max_new}.")
    if args.batch is not None and args.batch <= 0:
        raise UserError(f"Pass --batch ≥ 1 (rows decoded together); got {args.batch}.")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.margin < 0:
        raise UserError(f"Pass --temperature ≥ 0, 0 < --top-p ≤ 1 and --margin ≥ 0; got {args.temperature}, "
                        f"{args.top_p}, {args.margin}.")
    if not all(args.prompt):
        raise UserError("Pass non-empty --prompt texts.")
    if args.block is not None and args.block < 0:
        raise UserError(f"Pass --block ≥ 0 (neurons per gathered block; 0 = single neurons); got {args.block}.")
    if args.layout != "none" and args.ffn == "dense":
        raise UserError("--layout coactivation needs a sparse FFN; pass --ffn threshold or --ffn predicted.")


def block_of(args) -> int:
    """Neurons per gathered block: --block, else 32 with a layout, else 0 (single neurons)."""
    return args.block if args.block is not None else (32 if args.layout != "none" else 0)


def predictor_path(workdir, step: int, cett: float) -> str:
    """The saved predictors of `step` (labels at `cett`, else a_i != 0); UserError when there are none."""
    from sparsity_jax.predict.store import exists, predictor_dir

    for path in (predictor_dir(workdir, step, cett), predictor_dir(workdir, step, None)):
        if exists(path):
            return str(path)
    raise UserError(f"no trained predictors for step {step} in {Workdir(workdir).predictors}; train them "
                    f"with `sparsity-jax predictor --workdir {workdir} --cett {cett:g}` or use --ffn threshold.")


def chooser_of(args, wd, graphdef, params, step):
    """(chooser, its arrays, a one-line description)."""
    from sparsity_jax.infer import Dense, Predicted, Threshold

    if args.ffn == "dense":
        return Dense(), {}, "dense FFN"
    if args.ffn == "threshold":
        from sparsity_jax.search.thresholds import thresholds_for_cett

        res = thresholds_for_cett((graphdef, params), wd.val, args.cett)
        return Threshold(), {"threshold": res.threshold}, (
            f"threshold FFN at CETT {args.cett:g} (validation activation ratio {1 - res.sparsity.mean():.4f})")
    from sparsity_jax.infer.choosers import check_predictor
    from sparsity_jax.predict.store import load

    path = predictor_path(wd.workdir, step, args.cett)
    arrays, meta = load(path)
    cfg = wd.run.model_cfg
    try:
        check_predictor(arrays, cfg.num_layers, cfg.d_model, cfg.d_ff)
    except ValueError as e:
        raise UserError(f"the predictors in {path} do not fit this model ({e}); retrain them.") from None
    return Predicted(), arrays, f"predicted FFN ({path}, rank {arrays['w1'].shape[-1]})"


def report(gen, dec, rows: int) -> None:
    st, n = gen.stats, float(gen.stats["tokens"])
    steps = n / rows
    active_L, computed_L = gen.shares(dec.cfg.d_ff)
    union_L, block_L = gen.union_shares(dec.cfg.d_ff)
    common.log(f"prefill {gen.prefill_s:.3f} s; decode {int(steps)} steps × {rows} rows in {gen.decode_s:.3f} s: "
               f"{gen.tokens_per_s():.1f} tokens/s")
    common.log(f"neuron share (active per token) {active_L.mean():.4f}, union share (per step) {union_L.mean():.4f}, "
               f"block share (b = {dec.block or 1}) {block_L.mean():.4f}, computed {computed_L.mean():.4f}")
    common.log("layer  active share  union share  block share  computed share  budgets (per shard)  "
               "over first budget  ran dense")
    for i in range(dec.cfg.num_layers):
        budgets = "-" if dec.budgets is None else (",".join(map(str, dec.budgets[i])) or "none")
        common.log(f"{i:5d}  {active_L[i]:12.4f}  {union_L[i]:11.4f}  {block_L[i]:11.4f}  {computed_L[i]:14.4f}  "
                   f"{budgets:>19s}  {int(st['over'][i]):17d}  {int(st['dense'][i]):9d}")
    if dec.budgets is not None:
        common.log(f"overflows: {int(st['over'].sum())} token-layers over the first budget, {int(st['dense'].sum())} "
                   f"ran the dense FFN (of {int(n) * dec.cfg.num_layers}); results are exact either way")


def run(args) -> int:
    import jax

    check_args(args)

    def check(settings, steps):
        block = block_of(args)
        if block and settings.model.d_ff % block:
            raise UserError(f"--block {block} must divide the FFN width ({settings.model.d_ff}); pick a divisor.")
        if args.ffn == "predicted":
            predictor_path(args.workdir, steps[-1] if args.step is None else args.step, args.cett)

    wd, step, params = common.trained_params(args, check)
    from sparsity_jax.data import get_vocabulary
    from sparsity_jax.infer import Decoder
    from sparsity_jax.infer.budget import calibrate

    vocab = get_vocabulary(wd.settings.data, cache_dir=wd.path)
    encoded = [list(vocab.encode(p)) for p in args.prompt]
    if not all(encoded):
        raise UserError("a --prompt encodes to no token; pass longer text.")
    rows = args.batch or len(encoded)
    prompts = [encoded[i % len(encoded)] for i in range(rows)]
    graphdef = wd.run.graphdef
    chooser, arrays, what = chooser_of(args, wd, graphdef, params, step)
    block = block_of(args)
    f_local = wd.run.model_cfg.d_ff // wd.run.mesh.shape.get("tensor", 1)
    if block and f_local % block:
        raise UserError(f"--block {block} must divide the FFN width per tensor shard ({f_local}); pick a divisor.")
    dec = Decoder(graphdef, params, wd.run.mesh, chooser, arrays, block=block, kernel=args.kernel)
    if args.layout == "coactivation":
        from sparsity_jax.infer.budget import measured_candidates
        from sparsity_jax.infer.layout import coactivation_layout, permute_arrays, permute_params

        perms = coactivation_layout(measured_candidates(dec, wd.val, max_tokens=2048), block, seed=args.seed)
        dec = Decoder(graphdef, permute_params(params, perms), wd.run.mesh, chooser, permute_arrays(arrays, perms),
                      block=block, kernel=args.kernel)
        what += f", co-activation layout in blocks of {block}"
    if args.ffn != "dense":
        dec.set_budgets(calibrate(dec, wd.val, rows=rows, margin=args.margin))
    gen = dec.generate(prompts, args.max_new, key=jax.random.key(args.seed), temperature=args.temperature,
                       top_p=args.top_p)
    common.log(f"step {step}, {what}, mesh {dict(wd.run.mesh.shape)}")
    for b, prompt in enumerate(prompts):
        common.log(f"--- row {b}\n{vocab.decode(prompt + [int(t) for t in gen.tokens[b]])}")
    common.log("---")
    report(gen, dec, rows)
    return 0

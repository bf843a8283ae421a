"""`sparsity-jax generate`: KV-cache decoding of a trained run with a dense or sparse FFN
(`workflows.generation`), on the run's mesh (the FFN tensor-parallel over `mlp` where the
mesh has a tensor axis; `--config.mesh.tensor=N` picks another). Prints each row's prompt
and the new tokens' text (up to an EOS among them, however the prompt ends), then the
decode tokens/s, per layer the active-neuron share, the union and block-active shares of
a step and the budget overflows.

`--neuron-order coactivation` first permutes each layer's neurons so that the ones the
sparse FFN keeps together on validation tokens sit in contiguous blocks of `--block`
(issue 22, `infer.neuron_order`; the model's function is unchanged), then decodes with
block gathers; `--block` alone gathers blocks of the unpermuted neurons. (`--layout` is
the old name of `--neuron-order`, still taken.)

  sparsity-jax generate --workdir RUN --prompt TEXT [--prompt TEXT ...] [--max-new 64]
      [--ffn dense|threshold|predicted] [--cett 0.2] [--batch B] [--temperature 0]
      [--top-p 1] [--seed 0] [--step S] [--margin 0.1] [--eval-batches N]
      [--neuron-order none|coactivation] [--block 32] [--kernel auto|xla|tpu|gpu]
"""
from __future__ import annotations

from sparsity_jax.commands import common
from sparsity_jax.errors import UserError
from sparsity_jax.search.thresholds import check_target_cett
from sparsity_jax.workflows.generation import FFNS, NEURON_ORDERS, generate, predictor_path

TAKES_CONFIG = True


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="KV-cache decoding with a dense or sparse FFN; tokens/s and active shares")
    common.add_workdir(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several rows)")
    p.add_argument("--max-new", type=int, default=64, help="tokens generated per row")
    p.add_argument("--ffn", choices=FFNS, default="dense",
                   help="dense; threshold: skip |a_i|·‖W_out,i‖ < t_l at --cett; predicted: the trained predictors "
                        "choose")
    p.add_argument("--cett", type=float, default=0.2, help="CETT of the thresholds / of the predictors' labels")
    p.add_argument("--batch", type=int, default=None, help="rows (default: one per prompt; prompts are cycled)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--margin", type=float, default=0.1, help="neuron budgets: measured quantiles × (1 + margin)")
    p.add_argument("--neuron-order", "--layout", dest="neuron_order", choices=NEURON_ORDERS, default="none",
                   help="coactivation: permute neurons so co-kept ones share blocks of --block (function unchanged)")
    p.add_argument("--block", type=int, default=None,
                   help="gather whole blocks of this many neurons (default: 32 with --neuron-order coactivation, "
                        "else 0)")
    p.add_argument("--kernel", choices=("auto", "xla", "tpu", "gpu"), default="auto",
                   help="block-gather implementation (auto: Pallas on TPU / GPU, XLA on CPU)")
    common.add_config(p, what="config file instead of the run's own")
    common.add_eval_batches(p)
    common.add_distributed(p)


def check_args(args) -> None:
    check_target_cett(args.cett)
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
    if args.neuron_order != "none" and args.ffn == "dense":
        raise UserError("--neuron-order coactivation needs a sparse FFN; pass --ffn threshold or --ffn predicted.")


def block_of(args) -> int:
    """Neurons per gathered block: --block, else 32 with a neuron order, else 0 (single neurons)."""
    return args.block if args.block is not None else (32 if args.neuron_order != "none" else 0)


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
    check_args(args)

    def check(settings, steps):
        block = block_of(args)
        if block and settings.model.d_ff % block:
            raise UserError(f"--block {block} must divide the FFN width ({settings.model.d_ff}); pick a divisor.")
        if args.ffn == "predicted":
            predictor_path(args.workdir, steps[-1] if args.step is None else args.step, args.cett)

    wd, step, params = common.trained_params(args, check)
    g = generate(wd, step, params, args.prompt, args.max_new, ffn=args.ffn, target_cett=args.cett, rows=args.batch,
                 block=block_of(args), neuron_order=args.neuron_order, margin=args.margin, kernel=args.kernel,
                 seed=args.seed, temperature=args.temperature, top_p=args.top_p)
    common.log(f"step {step}, {g.what}, mesh {dict(wd.run.mesh.shape)}")
    for b, (prompt, text) in enumerate(zip(g.prompts, g.texts)):
        common.log(f"--- row {b}\n{prompt}{text}")
    common.log("---")
    report(g.generation, g.decoder, len(g.prompts))
    return 0

"""Generation: KV-cache decoding of one trained checkpoint with a dense or sparse FFN
(`infer/`) on the run's mesh. The FFN's `Sparsify` comes from the search (threshold: the
thresholds of a target CETT) or from the saved predictors; `neuron_order="coactivation"` first
permutes each layer's neurons so co-chosen ones share blocks (`infer.neuron_order`; the model's
function is unchanged). Returns `Generated`: each row's prompt and new text, the
`infer.Generation` (tokens, timings, per-layer statistics) and the `Decoder`."""
from __future__ import annotations

import dataclasses

import jax

from sparsity_jax.errors import UserError
from sparsity_jax.infer import Decoder, Generation
from sparsity_jax.infer.budget import calibrate, measured_candidates
from sparsity_jax.infer.gathered import check_predictor
from sparsity_jax.infer.neuron_order import coactivation_order, permute_params, permute_sparsify
from sparsity_jax.nn.sparsify import PredictorSpec, Sparsify
from sparsity_jax.predict import store
from sparsity_jax.runtime.workdir import Workdir
from sparsity_jax.search.thresholds import thresholds_for_cett

FFNS = ("dense", "threshold", "predicted")
NEURON_ORDERS = ("none", "coactivation")


def predictor_path(workdir, step: int, target_cett: float) -> str:
    """The saved predictors of `step` (labels at `target_cett`, else a_i != 0); UserError when there are none."""
    for path in (store.predictor_dir(workdir, step, target_cett), store.predictor_dir(workdir, step, None)):
        if store.exists(path):
            return str(path)
    raise UserError(f"no trained predictors for step {step} in {Workdir(workdir).predictors}; train them "
                    f"with `sparsity-jax predictor --workdir {workdir} --cett {target_cett:g}` or use --ffn threshold.")


def sparsify_of(ffn: str, target_cett: float, trained, params, step: int) -> tuple[Sparsify, str]:
    """(the `Sparsify` of the FFN `ffn` (one of FFNS), a one-line description) for
    checkpoint `step` of `trained` (a `runtime.trained.Trained`)."""
    if ffn == "dense":
        return Sparsify(), "dense FFN"
    if ffn == "threshold":
        res = thresholds_for_cett((trained.run.graphdef, params), trained.val, target_cett)
        return Sparsify(mode="threshold", threshold=res.threshold), (
            f"threshold FFN at CETT {target_cett:g} (validation activation ratio {1 - res.sparsity.mean():.4f})")
    path = predictor_path(trained.workdir, step, target_cett)
    arrays, _ = store.load(path)
    cfg = trained.run.model_cfg
    try:
        check_predictor(arrays.get("w1"), arrays.get("w2"), arrays.get("b"), cfg.num_layers, cfg.d_model, cfg.d_ff)
    except ValueError as e:
        raise UserError(f"the predictors in {path} do not fit this model ({e}); retrain them.") from None
    predictor = PredictorSpec(arrays["w1"], arrays["w2"], arrays.get("b"))
    return Sparsify(mode="predicted", predictor=predictor), f"predicted FFN ({path}, rank {arrays['w1'].shape[-1]})"


def new_text(vocab, new_ids) -> str:
    """The text of generated token ids, up to the first EOS among them: the prompt's own
    EOS / end-of-turn tokens (a chat template's `<|im_end|>`) never cut it."""
    return vocab.decode([int(t) for t in new_ids])


@dataclasses.dataclass
class Generated:
    """One `generate` call: rows, their text and what decoded them."""

    step: int
    what: str  # the FFN, in words
    prompts: list[str]  # each row's prompt (the prompts cycled over the rows)
    texts: list[str]  # each row's new text (`new_text`)
    generation: Generation
    decoder: Decoder


def generate(trained, step: int, params, prompts: list[str], max_new: int, *, ffn: str = "dense",
             target_cett: float = 0.2, rows: int | None = None, block: int = 0, neuron_order: str = "none",
             margin: float = 0.1, kernel: str = "auto", seed: int = 0, temperature: float = 0.0,
             top_p: float = 1.0) -> Generated:
    """Decodes `max_new` tokens after each of `rows` prompts (default: one row per prompt;
    prompts are cycled) with checkpoint `step`'s `params` of `trained`: the FFN `ffn` at
    `target_cett`, gathering blocks of `block` neurons (0: single neurons) in `neuron_order`,
    sparse budgets calibrated on the validation batches with `margin`."""
    from sparsity_jax.data import get_vocabulary  # local: TensorFlow, which the CLI's start-up does without

    vocab = get_vocabulary(trained.settings.data, cache_dir=trained.path)
    encoded = [list(vocab.encode(p)) for p in prompts]
    if not all(encoded):
        raise UserError("a --prompt encodes to no token; pass longer text.")
    rows = rows or len(encoded)
    run = trained.run
    sparsify, what = sparsify_of(ffn, target_cett, trained, params, step)
    f_local = run.model_cfg.d_ff // run.mesh.shape.get("tensor", 1)
    if block and f_local % block:
        raise UserError(f"--block {block} must divide the FFN width per tensor shard ({f_local}); pick a divisor.")
    dec = Decoder(run.graphdef, params, run.mesh, sparsify, block=block, kernel=kernel)
    if neuron_order == "coactivation":
        perms = coactivation_order(measured_candidates(dec, trained.val, max_tokens=2048), block, seed=seed)
        dec = Decoder(run.graphdef, permute_params(params, perms), run.mesh, permute_sparsify(dec.sparsify, perms),
                      block=block, kernel=kernel)
        what += f", co-activation neuron order in blocks of {block}"
    if ffn != "dense":
        dec.set_budgets(calibrate(dec, trained.val, rows=rows, margin=margin))
    gen = dec.generate([encoded[i % len(encoded)] for i in range(rows)], max_new, key=jax.random.key(seed),
                       temperature=temperature, top_p=top_p)
    return Generated(step=step, what=what, prompts=[prompts[i % len(prompts)] for i in range(rows)],
                     texts=[new_text(vocab, t) for t in gen.tokens], generation=gen, decoder=dec)

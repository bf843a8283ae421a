"""The name of every logged quantity: `metrics.jsonl` keys per split and TensorBoard tags.

The writer (`runtime.logs.MetricsWriter`) refuses a key that is not listed here, and
`report/` reads through the same constants, so each quantity has one name. Values are
scalars, per-layer lists (L,) (TensorBoard: `split/name/layer_i`) or, for the few
families, dicts (`ssd_seconds` by bucket, `seq_use_percentile` by p; TensorBoard:
`split/name/key`). `canonical` maps the names of logs written before this schema.
"""
from __future__ import annotations

import re

# splits (the "split" field of every metrics.jsonl record)
TRAIN, EVAL, UNITS, METHOD = "train", "eval", "units", "method"

# training and evaluation
LOSS = "loss"                          # token-weighted cross-entropy, nats
ACCURACY = "accuracy"                  # next-token accuracy
TOKENS = "tokens"                      # real (loss-weighted) tokens of the step / the evaluation
PERPLEXITY = "perplexity"              # exp(loss), eval only
ACTIVATION_RATIO = "activation_ratio"  # (L,) mean over real tokens of used units / F (= W&A per-token use)
GRAD_NORM = "grad_norm"
LAYERS_KEPT = "layers_kept"            # PLD: blocks run in the step
TOKENS_PER_SEC = "tokens_per_sec"
STEP_TIME = "step_time"                # seconds per train step since the last log line (`logs.StepTimer`)
MFU = "mfu"                            # model FLOPs utilisation, where the peak is known
# hidden-unit tracking, every step (W&A Table 2) and dead-unit masking (W&A §4.1)
ON_IN_FIRST, TURNED_ON, TURNED_OFF = "on_in_first", "turned_on", "turned_off"
CURRENT, EVER_USED, MASKED_FRACTION = "current", "ever_used", "masked_fraction"
# hidden-unit use, every train.metrics_every steps (W&A §2.1, App. A.6)
USE_PER_SEQUENCE, USE_PER_BATCH = "use_per_sequence", "use_per_batch"
USE_TOKEN_OVER_SEQUENCE, USE_SEQUENCE_OVER_BATCH = "use_token_over_sequence", "use_sequence_over_batch"
SEQ_USE_PERCENTILE = "seq_use_percentile"  # {"50": (L,), ...}: fraction of a sequence's tokens
# training methods (split "method"): SSD's controller and every method's accounting
SSD_SPARSE = "ssd_sparse"              # 1 in a sparse phase
SSD_ARI = "ssd_ari"                    # mean ARI over layers of consecutive clusterings
SSD_SWITCH = "ssd_switch"              # +1 to sparse, -1 to dense, after the logged step
SSD_TOP_K = "ssd_top_k"                # K of smoe / moe_dropout
PLD_EXPECTED_KEPT = "pld_expected_kept"
SSD_CUM_FLOPS = "ssd_cum_flops"
SSD_FLOPS_SPEEDUP = "ssd_flops_speedup"  # all-dense FLOPs / actual FLOPs so far
SSD_SECONDS = "ssd_seconds"            # {bucket: seconds}: dense, sparse, pld, compile, monitor and ASIDE
ASIDE = ("eval", "checkpoint", "log")  # buckets of SSD_SECONDS outside the steps: evaluations, saves, metric writes
SSD_STEPS = "ssd_steps"                # {phase: steps}

# hidden_units.use_from_counts keys → logged names
USE_NAMES = {"per_token": ACTIVATION_RATIO, "per_sequence": USE_PER_SEQUENCE, "per_batch": USE_PER_BATCH,
             "token_over_sequence": USE_TOKEN_OVER_SEQUENCE, "sequence_over_batch": USE_SEQUENCE_OVER_BATCH}
_STEP = {LOSS, ACCURACY, TOKENS, ACTIVATION_RATIO}
_TRACKING = {ON_IN_FIRST, TURNED_ON, TURNED_OFF, CURRENT, EVER_USED, MASKED_FRACTION}
KEYS: dict[str, frozenset[str]] = {
    TRAIN: frozenset(_STEP | _TRACKING | {GRAD_NORM, LAYERS_KEPT, TOKENS_PER_SEC, STEP_TIME, MFU}),
    EVAL: frozenset(_STEP | {PERPLEXITY}),
    UNITS: frozenset({*USE_NAMES.values(), SEQ_USE_PERCENTILE} | _TRACKING),
    METHOD: frozenset({SSD_SPARSE, SSD_ARI, SSD_SWITCH, SSD_TOP_K, PLD_EXPECTED_KEPT, SSD_CUM_FLOPS,
                    SSD_FLOPS_SPEEDUP, SSD_SECONDS, SSD_STEPS}),
}

_RENAMED = {"act_ratio": ACTIVATION_RATIO, "use_per_token": ACTIVATION_RATIO}
_RENAMED_SPLITS = {"ssd": METHOD}
_FAMILIES = ((re.compile(r"seq_use_p(\d+)$"), SEQ_USE_PERCENTILE), (re.compile(r"ssd_seconds_(\w+)$"), SSD_SECONDS),
             (re.compile(r"ssd_steps_(\w+)$"), SSD_STEPS))


def check(split: str, key: str) -> None:
    """ValueError unless `key` is a listed quantity of `split` (a programming error)."""
    if key not in KEYS.get(split, ()):
        raise ValueError(f"metric {key!r} is not a logged quantity of split {split!r}; add it to runtime/names.py")


def tb_scalars(split: str, key: str, value, tag: str | None = None):
    """(TensorBoard tag, number) pairs of one logged value: `split/key` for a number,
    `…/layer_i` for the entries of a per-layer list, `…/sub` for a family's dict."""
    tag = tag or f"{split}/{key}"
    if isinstance(value, list):
        for i, v in enumerate(value):
            yield from tb_scalars(split, key, v, f"{tag}/layer_{i}")
    elif isinstance(value, dict):
        for sub, v in value.items():
            yield from tb_scalars(split, key, v, f"{tag}/{sub}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield tag, value


def canonical(record: dict) -> dict:
    """A metrics.jsonl record with names of older logs mapped to today's (`_RENAMED`, the
    split "ssd" is "method", and flat families such as `ssd_seconds_dense` folded into
    their dict)."""
    out: dict = {}
    for key, value in record.items():
        if key == "split":
            value = _RENAMED_SPLITS.get(value, value)
        for pattern, family in _FAMILIES:
            match = pattern.match(key)
            if match:
                out.setdefault(family, {})[match.group(1)] = value
                break
        else:
            out[_RENAMED.get(key, key)] = value
    return out

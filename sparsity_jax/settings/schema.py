"""The typed, frozen settings of a run: one dataclass per config section.

Every field's type, default and meaning is here (configs/default.py is these defaults).
`Settings.from_dict` checks each value's type (a file's `train.steps="300"` is an
error, overrides are parsed by the field's type), every range and name, and the rules
between fields; every problem is a `UserError` that names the key and the fix.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from sparsity_jax.errors import UserError
from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.layers import INITIALIZERS
from sparsity_jax.nn.model import DTYPES, ROPE_SCALINGS, ModelConfig
from sparsity_jax.nn.stack import REMAT_POLICIES

RECORD = ("none", "mask", "scores", "both")
SCHEDULES = ("constant", "cosine", "wsd", "noam")
METHODS = ("dense", "ssd", "smoe", "moe_dropout", "pld")
MOE_METHODS = ("ssd", "smoe", "moe_dropout")
DISPATCH = ("capacity", "ragged")
BUILTIN_TASKS = ("local_code", "text_files", "c4_en", "lm1b")


def _fail(key: str, value: Any, fix: str) -> UserError:
    return UserError(f"config.{key}={value!r} is invalid: {fix}.")


def _positive(where: str, obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise _fail(f"{where}.{name}", getattr(obj, name), "set it to a positive number")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise _fail(key, value, f"use one of {', '.join(map(str, allowed))}")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """`data`: the seqio task and its pipeline (`sparsity_jax.data`)."""

    task: str = "local_code"      # local_code | text_files | c4_en | lm1b | a registered seqio task
    vocab: str = "byte"           # byte | sentencepiece | hf (a pretrained model's tokenizer, data.tokenizer)
    tokenizer: str = ""           # hf: tokenizer.json or tokenizer.model; relative = under the workdir
    spm_path: str = ""            # a trained SentencePiece .model; "" = train one into the workdir
    spm_vocab_size: int = 4096
    text_glob: str = ""           # text_files: .txt / .jsonl files (** allowed)
    text_field: str = "text"      # text_files: the string field of a .jsonl line
    num_shards: int = 8           # virtual shards; a multiple of the process count
    shuffle_buffer: int = 1000    # examples
    seed: int = 0
    val_permille: int = 20        # validation share of local corpora, in 1/1000; 1000 = all of it, no train split
    max_files: int = 0            # > 0: the first N files of each split (fast tests, smoke runs)
    tfds_data_dir: str = ""       # c4_en / lm1b: where the prepared TFDS datasets are ("" = TFDS default)

    def check(self) -> None:
        _one_of("data.vocab", self.vocab, ("byte", "sentencepiece", "hf"))
        if self.vocab == "hf" and not self.tokenizer:
            raise _fail("data.tokenizer", self.tokenizer, "data.vocab=hf needs a tokenizer.json or tokenizer.model path")
        if not self.task:
            raise _fail("data.task", self.task, f"name a task, e.g. one of {', '.join(BUILTIN_TASKS)}")
        if self.task == "text_files" and not self.text_glob:
            raise _fail("data.text_glob", self.text_glob, "task text_files needs a file glob, e.g. '/data/*.jsonl'")
        if self.text_glob and self.task != "text_files":
            raise _fail("data.text_glob", self.text_glob, f"data.task={self.task} does not read it; set data.task="
                        "text_files too, or pass --text FILE to evaluate on all of the file")
        for name, low in (("num_shards", 1), ("shuffle_buffer", 1), ("max_files", 0), ("spm_vocab_size", 16)):
            if getattr(self, name) < low:
                raise _fail(f"data.{name}", getattr(self, name), f"set it to at least {low}")
        if not 0 <= self.val_permille <= 1000:
            raise _fail("data.val_permille", self.val_permille, "set it between 0 and 1000")

    @property
    def all_validation(self) -> bool:
        """Every text is validation (val_permille = 1000, as `--text` sets it): evaluation
        only, there is no training split."""
        return self.val_permille == 1000


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """`train`: the loop, its logs, evaluations and checkpoints."""

    steps: int = 300
    global_batch_size: int = 32   # rows of seq_len tokens per step, over all processes
    seq_len: int = 128
    grad_accum: int = 1           # micro-batches per step (exact: summed gradients, divided once)
    log_every: int = 25
    eval_every: int = 100
    eval_batches: int = 8         # validation batches of global_batch_size rows; 0 = all of the validation split
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    record: str = "mask"          # what the FFNs record while training: none | mask | scores | both
    metrics_every: int = 50       # per-layer hidden-unit use + percentiles every N steps (0 = off)
    record_threshold: float = 0.0  # used = a != 0 and |a|·‖W_out,i‖ ≥ t (active_at; 0: a != 0)
    metrics_batch_groups: int = 1  # "per-batch" granularity: 1 = global batch, -1 = per device (W&A)

    def check(self) -> None:
        _positive("train", self, "steps", "global_batch_size", "grad_accum", "log_every", "eval_every",
                  "checkpoint_every", "keep_checkpoints")
        if self.eval_batches < 0:
            raise _fail("train.eval_batches", self.eval_batches, "set it to a positive number, or 0 for all batches")
        if self.seq_len < 2:
            raise _fail("train.seq_len", self.seq_len, "set it to at least 2")
        if self.global_batch_size % self.grad_accum:
            raise _fail("train.grad_accum", self.grad_accum, f"it must divide train.global_batch_size="
                        f"{self.global_batch_size}")
        _one_of("train.record", self.record, RECORD)
        if self.metrics_every < 0:
            raise _fail("train.metrics_every", self.metrics_every, "set it to 0 (off) or a positive interval")
        if self.record_threshold < 0:
            raise _fail("train.record_threshold", self.record_threshold, "set it to 0 or a positive magnitude")
        micro = self.global_batch_size // self.grad_accum
        groups = self.metrics_batch_groups
        if groups != -1 and (groups <= 0 or micro % groups):
            raise _fail("train.metrics_batch_groups", groups, f"use -1 or a divisor of the micro-batch of {micro} rows")


@dataclasses.dataclass(frozen=True)
class UnitMaskSettings:
    """`unit_mask`: dead-unit masking (W&A §4.1): at step `at_step` mask, for the rest of
    training, the units unused over the last `window` batches; `random` masks as many
    random units instead (the paper's control). at_step = 0: off."""

    at_step: int = 0
    window: int = 1
    random: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """`optimizer`: AdamW after global-norm clipping, and the learning-rate schedule
    (`train/optimizer.py`)."""

    lr: float = 3e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0        # 0 = no clipping
    schedule: str = "cosine"      # constant | cosine | wsd | noam
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1     # cosine / wsd floor, as a share of lr
    decay_fraction: float = 0.1   # wsd: the decaying share of the steps after warm-up

    def check(self) -> None:
        _positive("optimizer", self, "lr", "eps")
        _one_of("optimizer.schedule", self.schedule, SCHEDULES)
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise _fail(f"optimizer.{name}", getattr(self, name), "set it in [0, 1)")
        for name in ("weight_decay", "clip_norm", "warmup_steps"):
            if getattr(self, name) < 0:
                raise _fail(f"optimizer.{name}", getattr(self, name), "set it to 0 or more")
        if not 0 <= self.min_lr_ratio <= 1:
            raise _fail("optimizer.min_lr_ratio", self.min_lr_ratio, "set it in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise _fail("optimizer.decay_fraction", self.decay_fraction, "set it in (0, 1]")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """`method`: the training method (`sparsity_jax/methods/`) and its options.

    name: dense | ssd (switchable sparse-dense, SSD §4) | smoe | moe_dropout | pld (its
    baselines, SSD §5). num_experts / top_k: N and K of ssd's sparse phase and of smoe; N
    and K0 of moe_dropout. router_grad: true keeps SSD App. A's straight-through router
    gradient (gates 1 + α − sg(α)); false (default) uses constant gates, so K = N is
    exactly the dense step (the gradient has no forward counterpart and made every MoE
    step here diverge; the README has the numbers).
    """

    name: str = "dense"
    num_experts: int = 32
    top_k: int = 6
    monitor_every: int = 3000     # M: steps between clusterings in a dense phase
    ari_threshold: float = 0.9    # τ: switch to sparse when the ARI exceeds it
    sparse_share: float = 0.5     # r
    final_dense_share: float = 0.1  # l
    dispatch: str = "capacity"    # capacity | ragged (nn/moe.py)
    capacity_factor: float = 1.25
    kmeans_iters: int = 50
    pld_drop_rate: float = 0.25   # PLD: final mean share of dropped blocks
    pld_gamma: float = 0.001      # PLD: decay rate of θ(t) per step
    router_grad: bool = False

    @property
    def moe(self) -> bool:
        """Whether the method trains MoE steps (ssd's sparse phases, smoe, moe_dropout)."""
        return self.name in MOE_METHODS

    def check(self) -> None:
        _one_of("method.name", self.name, METHODS)
        _one_of("method.dispatch", self.dispatch, DISPATCH)
        _positive("method", self, "num_experts", "monitor_every", "capacity_factor", "kmeans_iters")
        if self.moe and not 0 < self.top_k <= self.num_experts:
            raise _fail("method.top_k", self.top_k, f"set it in 1..method.num_experts={self.num_experts}")
        if self.name == "moe_dropout" and self.top_k >= self.num_experts:
            raise _fail("method.top_k", self.top_k, f"moe_dropout grows K from method.top_k to method.num_experts="
                        f"{self.num_experts}, so set it below that")
        r, l = self.sparse_share, self.final_dense_share
        if not (0 <= r < 1 and 0 <= l < 1 and r + l < 1):
            raise _fail("method.sparse_share", r, f"SSD needs 0 <= r, l and r + l < 1 (final_dense_share={l})")
        if not -1 <= self.ari_threshold <= 1:
            raise _fail("method.ari_threshold", self.ari_threshold, "an ARI threshold lies in [-1, 1]")
        if self.pld_gamma < 0:
            raise _fail("method.pld_gamma", self.pld_gamma, "set it to 0 or more")


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """`mesh`: the device mesh (data, fsdp, tensor); one size may be -1 (= the rest)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def check(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise _fail(f"mesh.{name}", size, "set it to a positive size or -1 (the rest of the devices)")
        if list(sizes.values()).count(-1) > 1:
            raise UserError("config.mesh has more than one size -1; give all but one mesh size.")


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataSettings, "train": TrainSettings, "unit_mask": UnitMaskSettings,
    "optimizer": OptimizerSettings, "method": MethodSettings, "mesh": MeshSettings,
}


def _model_check(m: ModelConfig) -> None:
    _positive("model", m, "d_model", "num_layers", "num_heads", "d_ff")
    if m.num_kv_heads < 0:
        raise _fail("model.num_kv_heads", m.num_kv_heads, "set it to 0 (= num_heads) or a divisor of num_heads")
    if m.vocab_size < 0:
        raise _fail("model.vocab_size", m.vocab_size, "set it to 0 (the data vocabulary's size) or more")
    _one_of("model.mlp_init", m.mlp_init, tuple(INITIALIZERS))
    _one_of("model.activation", m.activation, tuple(ACTIVATIONS))
    _one_of("model.dtype", m.dtype, tuple(DTYPES))
    _one_of("model.param_dtype", m.param_dtype, tuple(DTYPES))
    _one_of("model.rope_scaling", m.rope_scaling, ROPE_SCALINGS)
    for name in ("head_dim", "sliding_window"):
        if getattr(m, name) < 0:
            raise _fail(f"model.{name}", getattr(m, name), "set it to 0 (off) or a positive size")
    if m.norm_eps <= 0 or m.rope_factor <= 0:
        raise UserError("config.model needs norm_eps > 0 and rope_factor > 0; fix the one that is not.")
    _one_of("model.remat", m.remat, tuple(REMAT_POLICIES))
    if m.fat_eps < 0 or m.init_std <= 0 or m.rope_theta <= 0:
        raise UserError("config.model needs fat_eps >= 0, init_std > 0 and rope_theta > 0; fix the one that is not.")
    try:  # the model's own invariants (shapes that must divide) live with the model
        dataclasses.replace(m, vocab_size=m.vocab_size or 1).validate()
    except ValueError as e:
        raise UserError(f"config.{e}; change one of the two sizes.") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run is configured with, validated (`from_dict`) and immutable."""

    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(vocab_size=0))
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    unit_mask: UnitMaskSettings = dataclasses.field(default_factory=UnitMaskSettings)
    optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)
    method: MethodSettings = dataclasses.field(default_factory=MethodSettings)
    mesh: MeshSettings = dataclasses.field(default_factory=MeshSettings)

    @classmethod
    def from_dict(cls, tree: dict) -> "Settings":
        """Typed settings from a plain nested dict (every key known, every value of its
        field's type; missing keys take the defaults); raises UserError naming the key."""
        unknown = set(tree) - {"seed", *SECTIONS}
        if unknown:
            raise UserError(f"unknown config key 'config.{sorted(unknown)[0]}'; valid: seed, {', '.join(SECTIONS)}.")
        seed = typed("seed", int, tree.get("seed", 0))
        sections = {}
        for name, kind in SECTIONS.items():
            values = tree.get(name, {})
            if not isinstance(values, dict):
                raise _fail(name, values, "give this section as a dict of its fields")
            sections[name] = build_section(kind, name, values)
        out = cls(seed=seed, **sections)
        out.check()
        return out

    def check(self) -> None:
        """Field ranges and names, then the rules between sections."""
        _model_check(self.model)
        for section in (self.data, self.train, self.optimizer, self.method, self.mesh):
            section.check()
        t, u, s, m = self.train, self.unit_mask, self.method, self.model
        if u.at_step < 0 or u.window <= 0:
            raise UserError("config.unit_mask needs at_step >= 0 and window > 0; fix the one that is not.")
        if u.at_step > t.steps:
            raise _fail("unit_mask.at_step", u.at_step, f"it is beyond train.steps={t.steps}")
        if (t.metrics_every or u.at_step) and t.record not in ("mask", "both"):
            raise _fail("train.record", t.record, "hidden-unit metrics and unit masking need train.record=mask (or both)")
        if u.at_step and s.name != "dense":
            raise _fail("unit_mask.at_step", u.at_step, f"dead-unit masking trains the dense FFN; set "
                        f"method.name=dense (not {s.name}) or unit_mask.at_step=0")
        if s.moe and m.d_ff % s.num_experts:
            raise _fail("method.num_experts", s.num_experts,
                        f"it must divide model.d_ff={m.d_ff} for method.name={s.name}")
        if s.name == "pld":
            top = (m.num_layers + 1) / (2 * m.num_layers)
            if not 0 <= s.pld_drop_rate <= top:
                raise _fail("method.pld_drop_rate", s.pld_drop_rate,
                            f"set it in [0, {top:.3f}] for {m.num_layers} layers")
            if t.record != "none":
                raise _fail("train.record", t.record, "method.name=pld skips whole blocks and records nothing; "
                            "set train.record=none")
        if t.global_batch_size % self.data.num_shards:
            raise _fail("train.global_batch_size", t.global_batch_size,
                        f"make it a multiple of data.num_shards={self.data.num_shards}")

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-able): the checkpoint's and config.json's record."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Settings":
        """A copy with whole sections (or the seed) replaced, validated again."""
        out = dataclasses.replace(self, **changes)
        out.check()
        return out

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model's config, vocab_size 0 resolved to the data vocabulary's `vocab_size`."""
        return dataclasses.replace(self.model, vocab_size=self.model.vocab_size or int(vocab_size))

    @property
    def micro_batch(self) -> int:
        return self.train.global_batch_size // self.train.grad_accum


def field_types(kind: type) -> dict[str, type]:
    """{field name: its type} of a settings dataclass."""
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


def typed(key: str, kind: type, value):
    """`value` checked against the field type `kind` (an int is a valid float)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (kind in (int, float) and isinstance(value, bool)) or not isinstance(value, kind):
        example = {int: "an int like 10", float: "a float like 0.5", bool: "a bool like true",
                   str: "a string like 'text'"}.get(kind, kind.__name__)
        raise UserError(f"config.{key}={value!r} is a {type(value).__name__}; give {example}.")
    return value


def build_section(kind: type, name: str, values: dict):
    """One section's dataclass from a dict of its fields (unknown keys are errors)."""
    types = field_types(kind)
    unknown = set(values) - set(types)
    if unknown:
        raise UserError(f"unknown config key 'config.{name}.{sorted(unknown)[0]}'; valid keys under {name}: "
                        f"{', '.join(sorted(types))}.")
    return kind(**{k: typed(f"{name}.{k}", types[k], v) for k, v in values.items()})

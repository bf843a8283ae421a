"""SSD's training baselines under the same trainer (SSD §5 "Baselines", App. A).

`ssd.method` selects what the trainer does with the FFNs / layers:
  dense        plain dense training.
  ssd          switchable sparse-dense training (`ssd.controller.SSDRun`).
  smoe         an MoE trained from scratch (Fedus et al. 2022): every FFN runs in MoE
               mode from step 0 with N = `ssd.num_experts`, K = `ssd.top_k` (the paper's
               baseline: N = 3, K = 2, "to ensure similar computational costs", App. A).
  moe_dropout  SMoE-Dropout (Chen et al. 2023a): MoE mode whose K grows linearly from
               K0 = `ssd.top_k` to N over training (App. A: 6 → 32); at K = N the step is
               the dense step (MoE with K = N equals dense, SSD App. A).
  pld          progressive layer dropping (Zhang & He 2020): block i = 1..L of L is kept
               with p_i(t) = 1 − i/L · (1 − θ(t)), θ(t) = (1 − θ̄)·exp(−γ t) + θ̄; a dropped
               block is the identity, a kept block's residual update is scaled by
               1/p_i (x + (block(x) − x)/p_i, as DeepSpeed's PLD) so that evaluation,
               which runs every block unscaled, matches training in expectation.

Evaluation (`BaselineRun.eval_sparsify`): smoe and moe_dropout are evaluated as the MoE
they train (K of N experts, the current step's K, exact "masked" dispatch; the dense
network when moe_dropout's K reached N), dense and pld as the dense network.

Router of smoe / moe_dropout: the SAME router as SSD's sparse phase, i.e. no trained
gate: α_n = x · c_n with c_n the mean of expert n's W_in columns (SSD Eq. 4), experts
the contiguous blocks of the F axis (never clustered: from scratch, the blocks are the
experts). Chen et al. use a frozen random router and Fedus et al. a trained softmax gate;
keeping SSD's router makes the schedule the only difference between the methods, and
the MoE step is the one `train.step` already compiles.

PLD's drop rate: App. A says PLD raises "the overall dropout rate from 0 to 0.25", which
we read as the mean over layers of 1 − p_i at the end: (1 − θ̄)(L + 1)/(2L) = `ssd.pld_drop_rate`,
so θ̄ = 1 − 2L·rate/(L + 1). Its FLOPs (expected, from the keep probabilities) are the
dense step's minus the dropped blocks' share, a block's share of a train step
estimated from shapes (`block_share`): everything else (attention, LM head) from XLA.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from sparsity_jax.errors import UserError

METHODS = ("dense", "ssd", "smoe", "moe_dropout", "pld")
MOE_METHODS = ("ssd", "smoe", "moe_dropout")


def method_of(cfg) -> str:
    """The run's `ssd.method`; configs saved before it existed say `ssd.enabled`."""
    s = cfg.ssd
    method = s.get("method", "dense")
    if s.get("enabled", False) and method == "dense":
        method = "ssd"
    if method not in METHODS:
        raise UserError(f"ssd.method={method!r} is not one of {', '.join(METHODS)}")
    return method


def router_grad(cfg) -> bool:
    """Whether the MoE steps keep SSD App. A's straight-through router gradient
    (`ssd.router_grad`, default false: see `nn/moe.py`). Runs trained before the option
    existed had it on; resumed with a current config they continue with constant gates."""
    value = cfg.ssd.get("router_grad", False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise UserError(f"ssd.router_grad must be true or false; got {value!r}")


def moe_dropout_top_k(step: int, total_steps: int, k0: int, num_experts: int) -> int:
    """K of MoE-Dropout after `step` completed steps: K0 → N linearly over training, in
    N − K0 + 1 equal stages (so K changes N − K0 times and compiles N − K0 + 1 steps)."""
    stages = num_experts - k0 + 1
    return min(num_experts, k0 + (stages * step) // max(total_steps, 1))


@dataclasses.dataclass(frozen=True)
class PLDSchedule:
    """Progressive layer dropping's keep probabilities (Zhang & He 2020, Eq. 5 / §4)."""

    num_layers: int
    drop_rate: float = 0.25  # final mean share of dropped blocks
    gamma: float = 0.001     # decay rate of θ(t) per step

    def __post_init__(self):
        top = (self.num_layers + 1) / (2 * self.num_layers)
        if not 0 <= self.drop_rate <= top or self.gamma < 0:
            raise UserError(f"ssd.pld_drop_rate must lie in [0, {top:.3f}] for {self.num_layers} layers "
                            f"and ssd.pld_gamma >= 0; got {self.drop_rate} and {self.gamma}")

    @property
    def theta_bar(self) -> float:
        return 1.0 - 2.0 * self.num_layers * self.drop_rate / (self.num_layers + 1)

    def keep_probs(self, step, xp=np):
        """(L,) keep probability of blocks 1..L after `step` steps (xp: numpy or jax.numpy)."""
        theta = (1.0 - self.theta_bar) * xp.exp(-self.gamma * xp.asarray(step, xp.float32)) + self.theta_bar
        depth = xp.arange(1, self.num_layers + 1, dtype=xp.float32) / self.num_layers
        return 1.0 - depth * (1.0 - theta)


def block_share(model_cfg, seq_len: int) -> float:
    """Share of ONE Transformer block in the model's train-step FLOPs, from shapes:
    per token a block costs 2·(attention + FFN params) + 4·T·d (scores and values,
    full T×T as XLA computes them) forward, the LM head 2·d·V; backward is 2× forward."""
    m = model_cfg
    block = (m.non_embedding_params() / m.num_layers) * 2 + 4 * seq_len * m.d_model
    head = 2 * m.d_model * m.vocab_size
    return block / (m.num_layers * block + head)


class Accounting:
    """Cumulative FLOPs (and their all-dense equivalent) and wall-clock per bucket.

    `cum` is JSON-able and lives in the checkpoint metadata, so the totals of a resumed
    run continue. Buckets: the phase of each step (dense / sparse / pld), "compile" (the
    first call of each compiled step variant, which compiles before it dispatches),
    "monitor" (SSD's clustering and switches, host work between steps); the trainer's
    evaluations and checkpoint saves go to "eval" and "checkpoint" (`aside`).

    Steps run asynchronously, so a lap charges the work dispatched since the previous
    one only up to what the host waited for. `step_done(..., sync=True)` waits for the
    state first: SSD does that before its clustering and switches, so the steps still in
    flight are charged to their own phase, not to the monitor work. (The baselines never
    wait: a moe_dropout K change only compiles, and that is charged to "compile".)"""

    def __init__(self, saved: dict | None = None):
        cum = saved or {}
        self.cum = {"flops": cum.get("flops", 0.0), "dense_equiv_flops": cum.get("dense_equiv_flops", 0.0),
                    "seconds": dict(cum.get("seconds", {})), "steps": dict(cum.get("steps", {}))}
        self._t = time.perf_counter()
        self._compiled: set = set()

    def restart(self) -> None:
        """Starts the next lap now (the trainer calls it just before its first step, so
        set-up and the initial evaluation are charged to no bucket)."""
        self._t = time.perf_counter()

    def step_done(self, phase: str, variant, state=None, sync: bool = False) -> None:
        """Charges the time since the previous lap for a finished step of `phase` run by
        compiled step `variant` (e.g. its top_k and `detailed`): to "compile" if it is that variant's
        first step in this process, else to `phase`. With `sync`, first waits for `state`."""
        if sync:
            import jax

            jax.block_until_ready(state)
        first = variant not in self._compiled
        self._compiled.add(variant)
        self.lap("compile" if first else phase)

    def lap(self, bucket: str) -> None:
        """Charges the wall-clock since the previous lap to `bucket`."""
        now = time.perf_counter()
        self.cum["seconds"][bucket] = self.cum["seconds"].get(bucket, 0.0) + now - self._t
        self._t = now

    def aside(self, bucket: str, seconds: float) -> None:
        """Charges `seconds` (measured by the caller) to `bucket` and leaves them out of
        the next lap, e.g. an evaluation between two steps."""
        self.cum["seconds"][bucket] = self.cum["seconds"].get(bucket, 0.0) + seconds
        self._t += seconds

    def add_step(self, phase: str, flops: float | None, dense_flops: float | None) -> None:
        """Counts one step of `phase` (charge its time with `lap(phase)` first)."""
        self.cum["steps"][phase] = self.cum["steps"].get(phase, 0) + 1
        self.cum["flops"] += flops or 0.0
        self.cum["dense_equiv_flops"] += dense_flops or 0.0

    def metrics(self) -> dict[str, float]:
        out = {"ssd_cum_flops": self.cum["flops"],
               "ssd_flops_speedup": self.cum["dense_equiv_flops"] / max(self.cum["flops"], 1.0)}
        out.update({f"ssd_seconds_{k}": v for k, v in self.cum["seconds"].items()})
        out.update({f"ssd_steps_{k}": float(v) for k, v in self.cum["steps"].items()})
        return out


class BaselineRun:
    """Host-side schedule and FLOPs accounting of smoe / moe_dropout / pld (the trainer
    calls `top_k(step)` before and `after_step` after each step, as for `SSDRun`)."""

    def __init__(self, cfg, run, meta: dict | None):
        self.cfg, self.method = cfg, method_of(cfg)
        self.pld = pld_schedule(cfg, run.model_cfg) if self.method == "pld" else None
        self.share = block_share(run.model_cfg, cfg.train.seq_len) if self.pld else 0.0
        saved = (meta or {}).get("ssd") or {}
        self.account = Accounting(saved.get("cum"))
        self.flops: dict[int, float | None] = {}

    def meta(self) -> dict:
        return {"method": self.method, "cum": self.account.cum}

    def top_k(self, step: int) -> int:
        """K of the MoE step that trains step `step` + 1 (0: the dense step)."""
        s = self.cfg.ssd
        if self.method == "smoe":
            return s.top_k
        if self.method == "moe_dropout":
            k = moe_dropout_top_k(step, self.cfg.train.steps, s.top_k, s.num_experts)
            return 0 if k == s.num_experts else k
        return 0

    def _flops(self, k: int, step_flops) -> float | None:
        if k not in self.flops:
            self.flops[k] = step_flops(k)
        return self.flops[k]

    def pld_dropped(self, step: int) -> float:
        """Expected number of blocks PLD drops in the step after `step` completed steps."""
        return float(np.sum(1.0 - self.pld.keep_probs(step)))

    def step_flops(self, step: int, step_flops) -> tuple[float | None, float | None]:
        """(FLOPs, dense FLOPs) of the step that trains step `step` + 1; PLD's are the
        expected FLOPs from the keep probabilities. `step_flops(top_k)` as in `after_step`."""
        dense = self._flops(0, step_flops)
        if self.pld is not None:
            return (None if dense is None else dense * (1.0 - self.share * self.pld_dropped(step))), dense
        return self._flops(self.top_k(step), step_flops), dense

    def eval_sparsify(self, state, step: int):
        """FFN settings to evaluate `state` after `step` completed steps: smoe /
        moe_dropout as the MoE of the last trained step (K of N experts, router centres from
        the current W_in, masked dispatch = exact top-k); None (the run's dense settings)
        for pld and for moe_dropout once K = N."""
        k = self.top_k(max(step - 1, 0))
        if not k:
            return None
        from sparsity_jax.ssd.convert import centres_from_params
        from sparsity_jax.ssd.inference import moe_sparsify

        s = self.cfg.ssd
        return moe_sparsify(centres_from_params(state["params"], s.num_experts), s.num_experts, k,
                            dispatch="masked", capacity_factor=float(s.capacity_factor))

    def after_step(self, state, step: int, step_flops, detailed: bool = False) -> tuple[dict, dict]:
        """Accounts the finished `step` (1-based); `step_flops(top_k)` is the compiled
        step's FLOPs, `detailed` whether that step was the metrics variant. Returns
        (state unchanged, metrics)."""
        k = self.top_k(step - 1)
        phase = "pld" if self.pld is not None else ("sparse" if k else "dense")
        self.account.step_done(phase, (k, detailed))
        flops, dense = self.step_flops(step - 1, step_flops)
        metrics = {"ssd_top_k": float(k or self.cfg.ssd.num_experts)} if self.method != "pld" else {}
        if self.pld is not None:
            metrics["pld_expected_kept"] = self.pld.num_layers - self.pld_dropped(step - 1)
        self.account.add_step(phase, flops, dense)
        metrics.update(self.account.metrics())
        self.account.lap("monitor")  # host work: FLOPs of newly compiled variants
        return state, metrics


def pld_schedule(cfg, model_cfg) -> PLDSchedule:
    return PLDSchedule(model_cfg.num_layers, float(cfg.ssd.pld_drop_rate), float(cfg.ssd.pld_gamma))


def check_method(cfg, model_cfg) -> str:
    """Validates the method's settings against the model; returns the method."""
    method, s = method_of(cfg), cfg.ssd
    if method in MOE_METHODS:
        router_grad(cfg)
        if s.num_experts <= 0 or model_cfg.d_ff % s.num_experts or not 0 < s.top_k <= s.num_experts:
            raise UserError(f"ssd.num_experts={s.num_experts} must divide model.d_ff={model_cfg.d_ff} and "
                            f"0 < ssd.top_k={s.top_k} <= num_experts")
        if s.dispatch not in ("capacity", "ragged"):
            raise UserError(f"ssd.dispatch={s.dispatch!r} is not one of capacity, ragged")
    if method == "pld":
        pld_schedule(cfg, model_cfg)
        if cfg.train.record != "none":
            raise UserError("ssd.method=pld skips whole blocks, so it records no activations; set train.record=none")
    if method == "moe_dropout" and s.top_k >= s.num_experts:
        raise UserError("ssd.method=moe_dropout needs ssd.top_k (K0) < ssd.num_experts")
    return method

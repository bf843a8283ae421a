"""SSD in the trainer: monitoring, switching and FLOPs accounting (SSD §4, App. A/C).

`SSDRun` is the host-side glue the trainer calls once per step:
  * in dense phases, every `ssd.monitor_every` steps from the phase start, it clusters
    every layer's neurons (rows of W_in, warm-started from the previous clustering,
    `moefy_clustering`: random and warm start, lower WCSS kept) and measures the mean
    adjusted Rand index over layers against the previous clustering;
  * `ssd.schedule.decide` turns that into switches; dense → sparse permutes the F axis
    of the parameters, Adam moments and unit state so each expert is a contiguous block
    (`ssd.convert.permute_state`); sparse → dense changes nothing (order stays permuted);
  * the sparse phase runs the train step's MoE variant (router centres = means of the
    experts' W_in columns, recomputed from the current parameters every step);
  * FLOPs per step of the compiled dense and sparse steps (XLA cost analysis) give the
    cumulative FLOPs and the speed-up over all-dense training; wall-clock per phase and
    of the monitoring (clustering, switches) (`ssd.baselines.Accounting`).
The previous clustering lives in the train state (`ssd_labels`, (L, F) int32) and the
controller state in the checkpoint metadata, so a resumed run keeps the same schedule.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.ssd.ari import adjusted_rand_index
from sparsity_jax.ssd.baselines import Accounting
from sparsity_jax.ssd.convert import block_labels, ffn_params, permute_state
from sparsity_jax.ssd.kmeans import moefy_clustering, permutation_from_labels
from sparsity_jax.ssd.schedule import SPARSE, SwitchConfig, decide, initial_state, is_monitor_step


def switch_config(cfg) -> SwitchConfig:
    s = cfg.ssd
    return SwitchConfig(total_steps=cfg.train.steps, monitor_every=s.monitor_every, ari_threshold=s.ari_threshold,
                        sparse_share=s.sparse_share, final_dense_share=s.final_dense_share)


def initial_labels(num_layers: int, d_ff: int, num_experts: int) -> jax.Array:
    return jnp.tile(block_labels(d_ff, num_experts)[None], (num_layers, 1))


class SSDRun:
    """Per-run SSD state on the host; `meta()` goes into the checkpoint metadata."""

    def __init__(self, cfg, run, meta: dict | None):
        self.cfg, self.run = cfg, run
        self.switch = switch_config(cfg)
        saved = (meta or {}).get("ssd") or {}
        self.state = saved.get("controller") or initial_state()
        self.clustered = bool(saved.get("clustered", False))
        self.flops = {"dense": None, "sparse": None}
        self.account = Accounting(saved.get("cum"))

    @property
    def sparse(self) -> bool:
        return self.state["phase"] == SPARSE

    def top_k(self, step: int) -> int:
        """K of the MoE step that trains step `step` + 1 (0: the dense step)."""
        return self.cfg.ssd.top_k if self.sparse else 0

    def eval_sparsify(self, state, step: int):
        """None: SSD evaluates its dense network (the run's own FFN settings)."""
        return None

    def _flops(self, name: str, step_flops) -> float | None:
        """FLOPs of the dense or sparse step, `step_flops(top_k)` once, then cached."""
        if self.flops[name] is None:
            self.flops[name] = step_flops(self.cfg.ssd.top_k if name == "sparse" else 0)
        return self.flops[name]

    def step_flops(self, step: int, step_flops) -> tuple[float | None, float | None]:
        """(FLOPs, dense FLOPs if known yet) of the step that trains step `step` + 1 (the
        current phase's); cached for `after_step`."""
        return self._flops("sparse" if self.sparse else "dense", step_flops), self.flops["dense"]

    def meta(self) -> dict:
        return {"method": "ssd", "controller": self.state, "clustered": self.clustered, "cum": self.account.cum}

    def _cluster(self, state, step: int):
        s = self.cfg.ssd
        key = jax.random.fold_in(jax.random.key(self.cfg.seed + 17), step)
        labels, aris = [], []
        for i, ffn in enumerate(ffn_params(state["params"])):
            prev = state["ssd_labels"][i]
            lab, _, _ = moefy_clustering(ffn["w_in"].T, s.num_experts, key=jax.random.fold_in(key, i),
                                         prev_labels=prev if self.clustered else None, n_iter=s.kmeans_iters)
            labels.append(lab)
            aris.append(float(adjusted_rand_index(prev, lab, s.num_experts)))
        return jnp.stack(labels), float(np.mean(aris))

    def after_step(self, state, step: int, step_flops, detailed: bool = False) -> tuple[dict, dict]:
        """Accounting for the finished `step`, then monitoring/switching; `step_flops(top_k)`
        is the compiled step's FLOPs. Returns (state, metrics)."""
        phase = "sparse" if self.sparse else "dense"
        monitor = is_monitor_step(self.switch, self.state, step)
        phase_ends = self.sparse and step >= self.state["sparse_end"]
        self.account.step_done(phase, (phase, detailed), state, sync=monitor or phase_ends)
        self.account.add_step(phase, self._flops(phase, step_flops), self._flops("dense", step_flops))
        metrics = {"ssd_sparse": float(self.sparse), **self.account.metrics()}
        ari = None
        if monitor:
            labels, mean_ari = self._cluster(state, step)
            ari = mean_ari if self.clustered else None
            self.clustered = True
            state = dict(state, ssd_labels=labels)
            if ari is not None:  # the first clustering has nothing to be compared with
                metrics["ssd_ari"] = ari
        self.state, action = decide(self.switch, self.state, step, ari)
        if action == "to_sparse":
            perms = jnp.stack([permutation_from_labels(lab, self.cfg.ssd.num_experts) for lab in state["ssd_labels"]])
            state = permute_state(state, perms)
            state["ssd_labels"] = initial_labels(*perms.shape, self.cfg.ssd.num_experts)
            state = jax.block_until_ready(jax.device_put(state, self.run.state_shardings))
        if action:
            metrics["ssd_switch"] = 1.0 if action == "to_sparse" else -1.0
        self.account.lap("monitor")
        return state, metrics

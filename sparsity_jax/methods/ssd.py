"""SSD in the trainer: monitoring, switching and accounting (SSD §4, App. A, App. C).

In dense phases, every `method.monitor_every` steps from the phase start, the neurons of
every layer are clustered (`ssd.kmeans.moefy_clustering`, warm-started from the previous
clustering) and compared with the previous clustering by the mean adjusted Rand index;
`ssd.schedule.decide` turns that into switches. Dense → sparse permutes the F axis of
the parameters, Adam moments and unit state into contiguous experts
(`ssd.convert.permute_state`); sparse → dense changes nothing. Sparse phases run the
train step's MoE variant. The previous clustering is train state (`ssd_labels`), the
controller state goes into the checkpoint metadata, so a resumed run keeps its schedule.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sparsity_jax.methods.accounting import Accounting, StepFlops
from sparsity_jax.methods.base import State, Variant, logged, saved_state
from sparsity_jax.methods.dense import detailed_at
from sparsity_jax.methods.moe import MoEStep
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.ssd.ari import adjusted_rand_index
from sparsity_jax.ssd.convert import ffn_params, initial_labels, permute_state
from sparsity_jax.ssd.kmeans import moefy_clustering, permutation_from_labels
from sparsity_jax.ssd.schedule import SPARSE, SwitchConfig, decide, initial_state, is_monitor_step
from sparsity_jax.runtime import names


def switch_config(settings) -> SwitchConfig:
    """The switching schedule of a run's `Settings`."""
    s = settings.method
    return SwitchConfig(total_steps=settings.train.steps, monitor_every=s.monitor_every,
                        ari_threshold=s.ari_threshold, sparse_share=s.sparse_share,
                        final_dense_share=s.final_dense_share)


@dataclasses.dataclass(frozen=True)
class SSDStep(MoEStep):
    """The device side of SSD: the MoE step in sparse phases, and the previous clustering
    (`ssd_labels`, (L, F)) in the train state."""

    shape_LxF: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, settings, mesh, **fields) -> "SSDStep":
        return super().of(settings, mesh, shape_LxF=(settings.model.num_layers, settings.model.d_ff), **fields)

    def init_state(self, key) -> State:
        return dict(super().init_state(key), ssd_labels=initial_labels(*self.shape_LxF, self.moe.num_experts))

    def host(self, run, meta: dict | None = None) -> "SSD":
        return SSD(run, saved_state(meta))


class SSD:
    """Switchable sparse-dense training: per-run controller state on the host."""

    name = "ssd"

    def __init__(self, run, saved: dict | None = None, flops: StepFlops | None = None):
        self.run, self.cfg, self.seed = run, run.settings.method, run.settings.seed
        self.switch = switch_config(run.settings)
        saved = saved or {}
        self.state = saved.get("controller") or initial_state()
        self.clustered = bool(saved.get("clustered", False))
        self.flops = flops or StepFlops(run)
        self.account = Accounting(saved.get("cum"))

    @property
    def sparse(self) -> bool:
        return self.state["phase"] == SPARSE

    def top_k(self, step: int) -> int:
        return self.cfg.top_k if self.sparse else 0

    def variant(self, step: int) -> Variant:
        k = self.top_k(step)
        return Variant(top_k=k, detailed=not k and detailed_at(self.run.settings, step))

    def step_flops(self, step: int) -> tuple[float | None, float | None]:
        return self.flops(self.top_k(step)), self.flops(0)

    def eval_sparsify(self, state, step: int) -> Sparsify:
        """SSD evaluates its dense network (the run's own FFN settings)."""
        return self.run.sparsify(state)

    def meta(self) -> dict:
        return {"method": self.name, "controller": self.state, "clustered": self.clustered, "cum": self.account.cum}

    def _cluster(self, state, step: int):
        key = jax.random.fold_in(jax.random.key(self.seed + 17), step)
        labels, aris = [], []
        for i, ffn in enumerate(ffn_params(state["params"])):
            prev = state["ssd_labels"][i]
            lab, _, _ = moefy_clustering(ffn["w_in"].T, self.cfg.num_experts, key=jax.random.fold_in(key, i),
                                         prev_labels=prev if self.clustered else None, n_iter=self.cfg.kmeans_iters)
            labels.append(lab)
            aris.append(float(adjusted_rand_index(prev, lab, self.cfg.num_experts)))
        return jnp.stack(labels), float(np.mean(aris))

    def after_step(self, state, step: int, variant: Variant) -> tuple[dict, dict]:
        """Accounts the finished `step`, then monitors and switches."""
        phase = "sparse" if self.sparse else "dense"
        monitor = is_monitor_step(self.switch, self.state, step)
        phase_ends = self.sparse and step >= self.state["sparse_end"]
        self.account.step_done(phase, variant, state, sync=monitor or phase_ends)
        self.account.add_step(phase, *self.step_flops(step - 1))
        metrics = {names.SSD_SPARSE: float(self.sparse), **self.account.metrics()}
        ari = None
        if monitor:
            labels, mean_ari = self._cluster(state, step)
            ari = mean_ari if self.clustered else None  # the first clustering has nothing to compare with
            self.clustered = True
            state = dict(state, ssd_labels=labels)
            if ari is not None:
                metrics[names.SSD_ARI] = ari
        self.state, action = decide(self.switch, self.state, step, ari)
        if action == "to_sparse":
            perms = jnp.stack([permutation_from_labels(lab, self.cfg.num_experts) for lab in state["ssd_labels"]])
            state = permute_state(state, perms)
            state["ssd_labels"] = initial_labels(*perms.shape, self.cfg.num_experts)
            state = jax.block_until_ready(jax.device_put(state, self.run.state_shardings))
        if action:
            metrics[names.SSD_SWITCH] = 1.0 if action == "to_sparse" else -1.0
        self.account.lap("monitor")
        return state, logged(self.run.settings, step, metrics, event=ari is not None or bool(action))

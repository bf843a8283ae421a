"""SSD's sparse inference of one trained checkpoint (SSD §5.2 Fig. 4a, §5.3): its experts
(own or MoEfied on the fly, `ssd.inference.inference_experts`) evaluated on the run's
validation batches at each k and dynamic top-k drop share. It sits above `methods` (which
says whether a checkpoint trained sparsely) and `ssd` (the algorithms)."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

from sparsity_jax.methods import trained_sparse
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.ssd.inference import check_ks, default_dispatch, inference_experts, sweep


@dataclasses.dataclass
class SparseInference:
    """Validation PPL of one checkpoint, dense and as an MoE at each k (`sweep` rows)."""

    workdir: str
    step: int
    structure: str  # the experts used: "own" or "moefy"
    sparse_trained: bool
    num_experts: int
    ks: list[int]
    ari_threshold: float
    train_top_k: int | None
    dispatch: str
    seq_len: int
    dense: dict[str, float]  # loss, perplexity
    rows: list[dict[str, Any]]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def sparse_inference(trained, step: int, cfg, *, num_experts: int, ks: Sequence[int], drop_shares: Sequence[float],
                     structure: str = "auto", seed: int = 0) -> SparseInference:
    """Validation PPL of checkpoint `step` of a trained workdir (`runtime.trained.Trained`)
    run as an MoE of `num_experts` experts with each k in `ks` and with dynamic top-k at
    `drop_shares`; `cfg`: the run's SSD settings (top_k, kmeans_iters, ari_threshold,
    num_experts). Dense checkpoints (and any with structure="moefy") are MoEfied with
    `jax.random.key(seed)`, warm-started from the checkpoint's SSD labels when N matches."""
    state, meta = trained.restore(step)
    sparse = trained_sparse(meta)
    labels = state.get("ssd_labels") if num_experts == cfg.num_experts else None
    params, centres, used = inference_experts(
        state["params"], num_experts, structure=structure, sparse_trained=sparse, key=jax.random.key(seed),
        labels=labels, n_iter=cfg.kmeans_iters)
    run = trained.run
    params = jax.device_put(params, run.param_shardings)
    centres = jax.device_put(centres, NamedSharding(run.mesh, PartitionSpec()))
    evaluate = lambda p, sp: run.evaluate(p, trained.val, sp)  # noqa: E731
    dense = evaluate(params, Sparsify())
    seq_len = trained.settings.train.seq_len
    rows = sweep(evaluate, params, centres, num_experts, ks, drop_shares, seq_len=seq_len)
    return SparseInference(
        workdir=trained.path, step=step, structure=used, sparse_trained=sparse, num_experts=num_experts,
        ks=check_ks(ks, num_experts), ari_threshold=cfg.ari_threshold, train_top_k=cfg.top_k if sparse else None,
        dispatch=default_dispatch(), seq_len=seq_len,
        dense={"loss": float(dense["loss"]), "perplexity": float(dense["perplexity"])}, rows=rows)

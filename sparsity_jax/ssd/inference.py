"""Sparse inference of any checkpoint: k = 1 … N experts and dynamic top-k (SSD §5.2
"Inference Efficiency", Fig. 4a; §5.3 "Dynamic Top-k", Fig. 5).

Evaluation is injected (`evaluate(params, sparsify) -> metrics with "loss"`) so these
functions stay free of the trainer and of the methods; `workflows.ssd_inference` runs
them on a trained workdir's checkpoint and validation batches.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sparsity_jax.errors import UserError
from sparsity_jax.nn.sparsify import MoESpec, Sparsify
from sparsity_jax.ssd.convert import centres_from_params, dense_to_moe, ffn_params

Array = jax.Array
STRUCTURES = ("auto", "own", "moefy")
Evaluate = Callable[[dict, Sparsify], dict]


def moefy_params(params: dict, num_experts: int, *, key: Array, labels: Array | None = None,
                 n_iter: int = 50) -> tuple[dict, Array]:
    """MoEfication of dense params (SSD §4.2): (permuted params, centres (L, N, d)).

    The permutation leaves the dense function unchanged; with the same key (and labels)
    the result is the same.
    """
    state, conv = dense_to_moe({"params": params, "opt_state": ()}, num_experts, key=key,
                               prev_labels=labels, n_iter=n_iter)
    return state["params"], conv.centres


def inference_experts(params: dict, num_experts: int, *, structure: str = "auto", sparse_trained: bool = False,
                      key: Array | None = None, labels: Array | None = None,
                      n_iter: int = 50) -> tuple[dict, Array, str]:
    """(params in expert order, centres (L, N, d), structure used) for sparse inference.

    Which experts (`structure`):
      own    the checkpoint's own MoE structure: experts are the contiguous blocks of its
             (already permuted) F axis, router centres c_n = means of the blocks' W_i
             rows of the current kernels (SSD Eq. 4). SSD §5.2 evaluates SSD (and
             MoE-Dropout) models this way: "we directly adopt their MoE structure used in
             pre-training" (re-MoEfying them was "slightly worse").
      moefy  MoEfication on the fly, as for densely pre-trained models: balanced k-means
             of each layer's W_i rows (`moefy_clustering`, deterministic for a key;
             warm-started from `labels` when given, e.g. an SSD checkpoint's last
             `ssd_labels`), F axis permuted into contiguous experts, centres from the
             permuted kernels.
      auto   own for checkpoints that trained as an MoE (`sparse_trained`, from
             `methods.trained_sparse`: an SSD sparse phase, SMoE, MoE-Dropout), moefy
             otherwise.
    """
    if structure not in STRUCTURES:
        raise UserError(f"structure {structure!r} is not one of {', '.join(STRUCTURES)}.")
    d_ff = ffn_params(params)[0]["w_in"].shape[1]
    if num_experts < 1 or d_ff % num_experts:
        raise UserError(f"The number of experts ({num_experts}) must divide d_ff={d_ff}; pass a divisor of d_ff.")
    if structure == "auto":
        structure = "own" if sparse_trained else "moefy"
    if structure == "own":
        return params, centres_from_params(params, num_experts), "own"
    key = jax.random.key(0) if key is None else key
    return (*moefy_params(params, num_experts, key=key, labels=labels, n_iter=n_iter), "moefy")


def check_ks(ks: Sequence[int], num_experts: int) -> list[int]:
    """Sorted unique k values, each in 1..N (UserError otherwise)."""
    bad = [k for k in ks if not 1 <= int(k) <= num_experts]
    if bad or not ks:
        raise UserError(f"k must be in 1..{num_experts} (the number of experts); got {list(ks)}.")
    return sorted({int(k) for k in ks})


def check_drop_shares(shares: Sequence[float]) -> list[float]:
    bad = [s for s in shares if not 0.0 <= float(s) < 1.0]
    if bad:
        raise UserError(f"drop shares must be in [0, 1), e.g. 0.5,0.75; got {list(shares)}.")
    return sorted({float(s) for s in shares})


def default_ks(num_experts: int, top_k: int | None = None) -> list[int]:
    """1, 2, 4, … N plus the training K: a cheap sketch of the PPL-vs-k curve."""
    ks = {2 ** i for i in range(int(math.log2(num_experts)) + 1)} | {num_experts}
    return sorted(ks | ({top_k} if top_k and 1 <= top_k <= num_experts else set()))


def default_dispatch() -> str:
    """Dispatch of exact (dropless) top-k inference: the masked reference.

    PPL vs k needs every selected expert computed (capacity dispatch may drop tokens).
    The dropless ragged path is no faster: on CPU XLA lowers ragged_dot densely over all
    experts, and on an H100 (jax 0.11.2, d=768, F=6144, N=32, 8192 tokens) its forward
    took 1.3 / 6.0 / 29.9 ms at k = 1 / 6 / 32 against 0.64 ms dense and 0.82–0.87 ms
    masked. Pass dispatch="capacity" to measure what the training step's dispatch gives.
    """
    return "masked"


def moe_sparsify(centres: Array, num_experts: int, k: int, *, drop_share: float = 0.0,
                 dispatch: str | None = None, capacity_factor: float = 1.25) -> Sparsify:
    """FFN settings for top-k MoE inference with the given router centres (L, N, d).

    Dynamic top-k (§5.3, `drop_share` > 0): the top-k experts of every token are
    candidates; the `drop_share` of them with the lowest importance α within each
    sequence (the FFN routes each sequence separately) are dropped, so important tokens
    keep more experts (`experts_per_token`).
    """
    spec = MoESpec(centres=centres, num_experts=num_experts, top_k=k, dispatch=dispatch or default_dispatch(),
                   capacity_factor=capacity_factor, drop_share=drop_share)
    return Sparsify(mode="moe", moe=spec)


def experts_per_token(k: int, drop_share: float, seq_len: int) -> float:
    """Mean experts per token under dynamic top-k over sequences of `seq_len` tokens:
    k · (1 − ⌊share · T·k⌋ / (T·k)) for sequences of T tokens (padding positions take
    part in the ranking)."""
    pairs = seq_len * k
    return k * (1.0 - math.floor(drop_share * pairs) / pairs)


def sweep(evaluate: Evaluate, params: dict, centres: Array, num_experts: int, ks: Sequence[int],
          drop_shares: Sequence[float] = (), *, seq_len: int, dispatch: str | None = None,
          capacity_factor: float = 1.25) -> list[dict[str, Any]]:
    """Validation loss / PPL at every k (drop share 0) and every (k, drop share > 0).

    Rows: k, drop_share, experts_per_token, loss, perplexity; fixed top-k first.
    """
    ks = check_ks(ks, num_experts)
    shares = [0.0] + [s for s in check_drop_shares(drop_shares) if s > 0]
    rows = []
    for share in shares:
        for k in ks:
            sp = moe_sparsify(centres, num_experts, k, drop_share=share, dispatch=dispatch,
                              capacity_factor=capacity_factor)
            loss = float(evaluate(params, sp)["loss"])
            rows.append({"k": k, "drop_share": share, "experts_per_token": experts_per_token(k, share, seq_len),
                         "loss": loss, "perplexity": float(np.exp(loss))})
    return rows

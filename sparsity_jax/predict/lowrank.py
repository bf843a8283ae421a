"""Low-rank activation predictors, one per FFN, stacked over layers (ReLU² App. A.2).

score = σ(W2·(W1·x) + b) with W1 (d, r), W2 (r, F) and an optional bias b (F,), on the
FFN input x (after the pre-FFN norm). The parameters of all layers are one pytree of
stacked arrays {"w1": (L, d, r), "w2": (L, r, F), "b": (L, F)}, so one jitted step trains
every layer; `spec` turns them into the FFN's `PredictorSpec` (predicted mode). The
rank r comes from a share of the FFN's parameters (ReLU² §5.2: "a few %") or is given.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sparsity_jax.errors import UserError
from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.sparsify import PREDICT_STRATEGIES, PredictorSpec, predictor_logits, predictor_scores

Array = jax.Array
Params = dict[str, Array]
LABELS = ("cett", "zero")  # active at the CETT's thresholds t_l (`active_at`), or a_i != 0


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """How predictors are sized, labelled and trained; `validate()` names the first problem.

    rank: r, or None for the rank whose parameters are `share` of the FFN's;
    labels: "cett" (active at t_l, the layer's threshold at a CETT: ‖n_i‖ ≥ t_l) or "zero"
      (a_i != 0, for activations with exact zeros); pos_weight: weight of the active class in the
      binary cross-entropy, None = per layer 2 × #inactive / #active of the training
      labels (`train.RECALL_BIAS`);
    steps, batch_tokens, lr, weight_decay: AdamW on minibatches of real tokens (cosine
      decay to 10%); train_batches: training batches whose tokens form the data set.
    """

    rank: int | None = None
    share: float = 0.04
    bias: bool = True
    labels: str = "cett"
    pos_weight: float | None = None
    steps: int = 1000
    batch_tokens: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    train_batches: int = 16
    seed: int = 0

    def validate(self) -> "PredictorConfig":
        if self.rank is not None and (isinstance(self.rank, bool) or self.rank <= 0):
            raise UserError(f"Pass a positive predictor rank (--rank); got {self.rank}.")
        if not 0 < self.share < 1:
            raise UserError(f"Pass the predictor's share of the FFN parameters in (0, 1) (--share); got {self.share}.")
        if self.labels not in LABELS:
            raise UserError(f"Pass labels as one of {', '.join(LABELS)}; got {self.labels!r}.")
        if self.pos_weight is not None and not self.pos_weight > 0:
            raise UserError(f"Pass a positive --pos-weight (or none for 2 × #inactive/#active); got {self.pos_weight}.")
        for name in ("steps", "batch_tokens", "train_batches"):
            if getattr(self, name) <= 0:
                raise UserError(f"Pass a positive {name.replace('_', '-')}; got {getattr(self, name)}.")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UserError(f"Pass lr > 0 and weight decay >= 0; got lr={self.lr}, weight_decay={self.weight_decay}.")
        return self


def ffn_matrices(activation: str) -> int:
    """Weight matrices of d × F in the FFN: 3 when gated (W_in, W_gate, W_out), else 2."""
    return 3 if ACTIVATIONS[activation].gated else 2


def rank_for_share(d_model: int, d_ff: int, n_mats: int, share: float, bias: bool = True) -> int:
    """The largest r ≥ 1 with r·(d + F) (+ F for the bias) ≤ share · n_mats·d·F."""
    budget = share * n_mats * d_model * d_ff - (d_ff if bias else 0)
    return max(1, int(budget // (d_model + d_ff)))


def resolve_rank(cfg: PredictorConfig, d_model: int, d_ff: int, n_mats: int) -> int:
    """cfg.rank, or the rank of cfg.share; UserError when it exceeds min(d, F)."""
    r = cfg.rank if cfg.rank is not None else rank_for_share(d_model, d_ff, n_mats, cfg.share, cfg.bias)
    if r > min(d_model, d_ff):
        raise UserError(f"Pass a predictor rank at most min(d, F) = {min(d_model, d_ff)}; got {r}.")
    return r


def parameter_count(d_model: int, d_ff: int, rank: int, bias: bool) -> int:
    """Parameters of one layer's predictor: r·(d + F) (+ F)."""
    return rank * (d_model + d_ff) + (d_ff if bias else 0)


def init_params(key: Array, num_layers: int, d_model: int, d_ff: int, rank: int, bias: bool = True) -> Params:
    """LeCun-normal W1, W2 (fan-in d and r), zero bias; float32."""
    k1, k2 = jax.random.split(key)
    init = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    params = {"w1": init(k1, (num_layers, d_model, rank), jnp.float32),
              "w2": init(k2, (num_layers, rank, d_ff), jnp.float32)}
    if bias:
        params["b"] = jnp.zeros((num_layers, d_ff), jnp.float32)
    return params


def logits(params: Params, x_LxNxD: Array) -> Array:
    """Pre-sigmoid scores of every layer's predictor on that layer's inputs: (L, N, F) float32."""
    return jax.vmap(predictor_logits)(params["w1"], params["w2"], params.get("b"), x_LxNxD)


def scores(params: Params, x_LxNxD: Array) -> Array:
    """σ(W2·(W1·x) + b): (L, N, F) float32 in [0, 1]."""
    return jax.vmap(predictor_scores)(params["w1"], params["w2"], params.get("b"), x_LxNxD)


def bce_loss(params: Params, x_LxNxD: Array, labels_LxNxF: Array, pos_weight_L: Array) -> tuple[Array, Array]:
    """(Σ over layers of the mean weighted binary cross-entropy, per-layer means (L,)).

    Per neuron: w·y·softplus(−z) + (1 − y)·softplus(z) = −w·y·log σ(z) − (1 − y)·log(1 − σ(z)),
    with z the logit, y the label and w the layer's positive-class weight."""
    z = logits(params, x_LxNxD)
    y = labels_LxNxF.astype(jnp.float32)
    per_LxNxF = pos_weight_L[:, None, None] * y * jax.nn.softplus(-z) + (1.0 - y) * jax.nn.softplus(z)
    per_layer_L = jnp.mean(per_LxNxF, axis=(1, 2))
    return jnp.sum(per_layer_L), per_layer_L


def spec(params: Params, strategy: str = "threshold", k: int = 0) -> PredictorSpec:
    """The FFN's `PredictorSpec` of stacked predictor parameters (predicted mode)."""
    if strategy not in PREDICT_STRATEGIES:
        raise UserError(f"Pass the prediction strategy as one of {', '.join(PREDICT_STRATEGIES)}; got {strategy!r}.")
    return PredictorSpec(w1=params["w1"], w2=params["w2"], b=params.get("b"), strategy=strategy, k=int(k))

"""Training the predictors of all layers at once (ReLU² App. A.2).

Binary cross-entropy between σ(W2·(W1·x) + b) and the active labels, the active class
weighted by w_l (default 2 × #inactive / #active of layer l, so rare active neurons are
not ignored and recall is favoured), AdamW with cosine decay. One jitted step updates
the stacked parameters of every layer; each minibatch of real tokens is sharded over the
mesh's data axes (data, fsdp) like a training batch, the parameters are replicated (they
are small).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sparsity_jax.errors import UserError
from sparsity_jax.predict.data import TokenSet
from sparsity_jax.predict.lowrank import Params, PredictorConfig, bce_loss, init_params


class TrainInfo(NamedTuple):
    """What a predictor training did."""

    pos_weight: np.ndarray  # (L,) weight of the active class
    loss: np.ndarray  # (L,) mean weighted BCE of the last logged minibatches
    tokens: int  # real tokens of the training set
    seconds: float  # wall time of the steps after the first (compiled) one
    compile_seconds: float  # the first step, compile included


# The default weight of the active class is RECALL_BIAS × #inactive / #active: a missed
# active neuron changes the FFN's output, a false alarm only costs its compute. On the
# tiny ReLU² model (bench/results/predictor_sweep_*) the balanced weight (factor 1) gave
# recall 0.820 at prediction sparsity 0.684, this default 0.917 at 0.563.
RECALL_BIAS = 2.0


def positive_weight(labels_LxNxF: np.ndarray, fixed: float | None = None) -> np.ndarray:
    """Per layer, `fixed` or RECALL_BIAS × #inactive / #active (1 for a layer without
    active labels), float32 (L,)."""
    num_layers = labels_LxNxF.shape[0]
    if fixed is not None:
        return np.full(num_layers, fixed, np.float32)
    active_L = labels_LxNxF.reshape(num_layers, -1).sum(axis=1, dtype=np.float64)
    total = labels_LxNxF[0].size
    balanced_L = (total - active_L) / np.maximum(active_L, 1)
    return np.where(active_L > 0, RECALL_BIAS * balanced_L, 1.0).astype(np.float32)


def make_step(tx: optax.GradientTransformation) -> Callable:
    """step(params, opt_state, x, labels, pos_weight) -> (params, opt_state, per-layer loss)."""

    def step(params, opt_state, x_LxMxD, labels_LxMxF, pos_weight_L):
        (_, loss_L), grads = jax.value_and_grad(bce_loss, has_aux=True)(params, x_LxMxD, labels_LxMxF, pos_weight_L)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss_L

    return step


def train_predictors(data: TokenSet, cfg: PredictorConfig, rank: int, mesh: Mesh,
                     log: Callable[[str], None] | None = None, log_every: int = 0) -> tuple[Params, TrainInfo]:
    """Trains the stacked predictors on `data` (real tokens of training batches).

    Minibatches of cfg.batch_tokens tokens are drawn from a permutation of the tokens,
    reshuffled at every pass, with a seeded numpy generator (the same on every process;
    each process then supplies the rows of its own devices).
    """
    num_layers, n, d_model = data.x_LxNxD.shape
    d_ff = data.labels_LxNxF.shape[-1]
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_tokens % shards:
        raise UserError(f"Pass a predictor batch of tokens divisible by the mesh's data×fsdp = {shards}; "
                        f"got {cfg.batch_tokens}.")
    pos_weight_L = positive_weight(data.labels_LxNxF, cfg.pos_weight)
    tx = optax.adamw(optax.cosine_decay_schedule(cfg.lr, cfg.steps, alpha=0.1), weight_decay=cfg.weight_decay)
    repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, ("data", "fsdp"), None))
    params = jax.device_put(init_params(jax.random.key(cfg.seed), num_layers, d_model, d_ff, rank, cfg.bias), repl)
    opt_state = jax.jit(tx.init, out_shardings=repl)(params)
    step = jax.jit(make_step(tx), in_shardings=(repl, repl, rows, rows, repl), out_shardings=(repl, repl, repl),
                   donate_argnums=(0, 1))
    rng = np.random.default_rng(cfg.seed)
    order, pos, m = rng.permutation(n), 0, cfg.batch_tokens
    pos_weight = jax.device_put(pos_weight_L, repl)
    losses, t0, t_first = [], time.perf_counter(), 0.0
    for i in range(cfg.steps):
        if pos + m > n and pos > 0:  # a new pass over the tokens
            order, pos = rng.permutation(n), 0
        idx = np.take(order, np.arange(pos, pos + m), mode="wrap")  # wraps only when n < m
        pos += m
        x = _global(data.x_LxNxD[:, idx], rows)
        y = _global(data.labels_LxNxF[:, idx], rows)
        params, opt_state, loss_L = step(params, opt_state, x, y, pos_weight)
        losses = (losses + [loss_L])[-20:]
        # one step in flight: queued collective programs can starve XLA:CPU's rendezvous
        jax.block_until_ready(loss_L)
        if i == 0:
            t_first = time.perf_counter() - t0
        if log is not None and log_every and ((i + 1) % log_every == 0 or i + 1 == cfg.steps):
            log(f"  predictor step {i + 1}/{cfg.steps}: weighted BCE per layer "
                + " ".join(f"{v:.4f}" for v in np.asarray(loss_L)))
    mean_loss_L = np.mean(np.asarray(jax.device_get(losses)), axis=0)
    seconds = time.perf_counter() - t0 - t_first
    return params, TrainInfo(pos_weight_L, mean_loss_L, int(n), seconds, t_first)


def _global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds whole."""
    return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

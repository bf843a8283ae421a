"""The FFN, which owns the neuron decomposition, and its sparsity modes.

Neuron decomposition (ReLU² Wins §3, Sparsing Law §2.2; PAPERS.md): neuron i's output
is n_i = a_i · W_out[i, :] and its magnitude ‖n_i‖ = |a_i| · ‖W_out[i, :]‖₂ (`FFN`). One
parameter set serves every sparsity mode (dense, threshold, topk, fat, unit_mask, moe,
predicted; `FFN.__call__`), which can also record the hidden-unit use, the activation
scores and its input (what activation predictors learn from, ReLU² App. A.2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sparsity_jax.nn.activations import fatrelu, get_activation
from sparsity_jax.nn.layers import constrain, get_initializer, param
from sparsity_jax.nn.moe import moe_ffn
from sparsity_jax.nn.sparsify import KEEP, MODES, Sparsify, active_at, magnitudes, out_norms

Array = jax.Array
RECORD_NAMES = ("mask", "scores", "inputs")
RECORD = (None, "both") + RECORD_NAMES  # the single-value spellings; any tuple of RECORD_NAMES works too
# names of the pre-activations W_in x and W_gate x for remat policies (`nn.stack.REMAT_POLICIES`)
PRE_ACTIVATION_NAMES = ("ffn_pre", "ffn_gate_pre")
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_mlp")


def recorded(record) -> frozenset[str]:
    """The names a `record` value asks for: None → none, "both" → mask and scores, a name
    of RECORD_NAMES → that one, a tuple / set of names → those."""
    if record is None:
        return frozenset()
    if record == "both":
        return frozenset(("mask", "scores"))
    names = (record,) if isinstance(record, str) else tuple(record)
    if not names or any(n not in RECORD_NAMES for n in names):
        raise ValueError(f"record must be None, 'both', one of {RECORD_NAMES} or a tuple of them, got {record!r}")
    return frozenset(names)


class FFN(nnx.Module):
    """Position-wise FFN `W_out σ(W_in x)` or gated `W_out [σ(W_gate x) ⊙ W_in x]`, no biases.

    Kernels (Flax layout): w_in, w_gate (d, F) with axes ('embed', 'mlp'); w_out (F, d)
    with axes ('mlp', 'embed').

    Neuron decomposition: activation scores a (B, T, F) with FFN(x) = a @ W_out; neuron
    i's output is n_i = a_i · W_out[i, :] (row i of the Flax kernel) and its magnitude
    ‖n_i‖ = |a_i| · ‖W_out[i, :]‖₂.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
        fat_eps: float = 0.0,
        kernel_init: str = "lecun_normal",
        init_std: float = 0.02,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.act = get_activation(activation)
        self.fat_eps = fat_eps
        self.dtype = dtype
        init = get_initializer(kernel_init, init_std)
        self.w_in = param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
        if self.act.gated:
            self.w_gate = param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
        self.w_out = param(rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype)

    def out_norms(self) -> Array:
        """‖W_out[i, :]‖₂ for every neuron i, shape (F,), float32."""
        return out_norms(self.w_out[...])

    def sigma(self, x: Array) -> Array:
        if self.act.fn is fatrelu:
            return self.act.fn(x, self.fat_eps)
        return self.act.fn(x)

    def kernels(self) -> dict[str, Array]:
        """The kernels in the compute dtype: in (d, F), out (F, d) and, gated, gate (d, F)."""
        out = {"in": self.w_in[...].astype(self.dtype), "out": self.w_out[...].astype(self.dtype)}
        if self.act.gated:
            out["gate"] = self.w_gate[...].astype(self.dtype)
        return out

    def activate(self, h_in: Array, h_gate: Array | None = None) -> Array:
        """Activation scores a from the pre-activations W_in x (and W_gate x when gated)."""
        return self.gated_scores(self.sigma(h_gate), h_in) if self.act.gated else self.sigma(h_in)

    def gated_scores(self, s: Array, h_in: Array) -> Array:
        """a = s ⊙ up(W_in x) of a gated FFN from its gate score s = σ(W_gate x): the one
        definition of the gated activation (`activate`, `hidden` and the decode FFN use it)."""
        return s * self.act.up(h_in)

    def hidden(self, x_BxTxD: Array) -> tuple[Array, Array]:
        """Gate score s and activation scores a, both (B, T, F) in the compute dtype; the
        pre-activations are named checkpoints (`PRE_ACTIVATION_NAMES`) a remat policy can keep."""
        x = x_BxTxD.astype(self.dtype)
        pre = lambda w, name: checkpoint_name(constrain(x @ w[...].astype(self.dtype), HIDDEN_AXES), name)  # noqa: E731
        h_BxTxF = pre(self.w_in, PRE_ACTIVATION_NAMES[0])
        if self.act.gated:
            s_BxTxF = self.sigma(pre(self.w_gate, PRE_ACTIVATION_NAMES[1]))
            return s_BxTxF, self.gated_scores(s_BxTxF, h_BxTxF)
        a_BxTxF = self.sigma(h_BxTxF)
        return a_BxTxF, a_BxTxF

    def project(self, a_BxTxF: Array) -> Array:
        """FFN output a @ W_out, (B, T, d)."""
        return a_BxTxF @ self.w_out[...].astype(self.dtype)

    def __call__(self, x_BxTxD: Array, sp: Sparsify = Sparsify(), record=None) -> Array:
        """FFN output (B, T, d) in the sparsity mode `sp.mode`.

        One parameter set serves every mode (`Sparsify.mode`, rules in
        `nn/sparsify.py`), so switching modes never changes parameter shapes and
        optimizer state / checkpoints survive a switch: dense; threshold (keep
        ‖n_i‖ ≥ t, `threshold_keep`); topk and fat on
        the gate score s (σ(W_gate x) for gated FFNs, a otherwise); unit_mask (dense with
        a fixed 0/1 mask, W&A §4.1); moe (SSD's sparse mode over contiguous expert
        blocks, `nn/moe.py`); predicted (a low-rank predictor of the input chooses each
        token's neurons, `sp.predictor`; the others are zeroed, masked compute as in
        topk). A `unit_mask` is applied in every mode but moe (masked units contribute
        exactly 0 and get exactly 0 gradient through this path).

        Recording (`recorded(record)`: None, 'mask', 'scores', 'inputs', 'both' = mask +
        scores, or a tuple of names): the FFN sows `mask` (bool, B×T×F, the hidden-unit
        use after sparsification: a_i != 0, and active at record_threshold
        (`active_at`) when one is given), `scores` (a, compute dtype) and `inputs`
        (its input x, B×T×d, compute dtype) as nnx.Intermediate; the moe mode sows the
        dropped-token count `moe_dropped` (and `inputs` when asked). With record=None
        nothing is sown.
        """
        if sp.mode not in KEEP:
            raise ValueError(f"unknown FFN mode {sp.mode!r}; choose one of {', '.join(MODES)}")
        names = recorded(record)
        if "inputs" in names:
            self.sow(nnx.Intermediate, "inputs", x_BxTxD.astype(self.dtype))
        if sp.mode == "moe":
            if sp.moe is None:
                raise ValueError("moe mode needs Sparsify(moe=MoESpec(...))")
            # Route each sequence separately (GShard-style groups): capacity is per
            # sequence and the batch axis stays the sharded axis, so data-parallel
            # meshes partition the dispatch instead of replicating it.
            kernels = self.kernels()

            def one_row(x_TxD):
                y, aux = moe_ffn(kernels, self.activate, x_TxD[None], sp.moe.centres, **sp.moe.options())
                return y[0], aux["dropped"]

            y_BxTxD, dropped_B = jax.vmap(one_row)(x_BxTxD)
            if names:
                self.sow(nnx.Intermediate, "moe_dropped", jnp.sum(dropped_B))
            return y_BxTxD
        self._check_mode(sp)
        s, a = self.hidden(x_BxTxD)
        keep_fn = KEEP[sp.mode]
        needs_mag = sp.mode == "threshold" or ("mask" in names and sp.record_threshold is not None)
        mag = magnitudes(a, self.out_norms()) if needs_mag else None
        if keep_fn is not None:
            a = jnp.where(keep_fn(s, mag, sp, x_BxTxD), a, jnp.zeros_like(a))
        if sp.unit_mask is not None:
            a = a * sp.unit_mask.astype(a.dtype)
        if "mask" in names:
            used = a != 0 if sp.record_threshold is None else (a != 0) & active_at(mag, sp.record_threshold)
            self.sow(nnx.Intermediate, "mask", used)
        if "scores" in names:
            self.sow(nnx.Intermediate, "scores", a)
        return self.project(a)

    def _check_mode(self, sp: Sparsify) -> None:
        """The topk / predicted modes' static settings fit this FFN's shape."""
        d_model, d_ff = self.w_in.shape
        if sp.mode == "topk" and isinstance(sp.k, (int, np.integer)) and not 0 < sp.k <= d_ff:  # traced: unchecked
            raise ValueError(f"topk mode needs 0 < k <= d_ff={d_ff}, got k={sp.k}")
        if sp.mode != "predicted":
            return
        pr = sp.predictor
        if pr is None:
            raise ValueError("predicted mode needs Sparsify(predictor=PredictorSpec(...))")
        if pr.w1.shape[0] != d_model or pr.w2.shape[-1] != d_ff or pr.w1.shape[-1] != pr.w2.shape[0]:
            raise ValueError(f"predictor shapes w1 {pr.w1.shape}, w2 {pr.w2.shape} do not fit d={d_model}, F={d_ff}")
        if pr.strategy == "topk" and not 0 < pr.k <= d_ff:
            raise ValueError(f"predicted top-k needs 0 < k <= d_ff={d_ff}, got k={pr.k}")

"""The FFN, which owns the neuron decomposition, and its sparsity modes.

Neuron decomposition (ReLU² Wins §3, Sparsing Law §2.2; PAPERS.md): activation scores
a (B, T, F) with FFN(x) = a @ W_out; neuron i's output is n_i = a_i · W_out[i, :] (row i
of the Flax kernel) and its magnitude ‖n_i‖ = |a_i| · ‖W_out[i, :]‖₂.

One parameter set serves every mode (`Sparsify.mode`), so switching modes never changes
parameter shapes and optimizer state / checkpoints survive a switch:

  dense      all neurons.
  threshold  per-layer scalar t: neuron i skipped when |a_i| · ‖W_out,i‖ < t
             (i.e. |a_i| < t / ‖W_out,i‖; ReLU² Wins §3, Sparsing Law Eq. 3).
  topk       per token, keep the k largest |s_i| of the gate score s (Sparsing Law §4.1).
  fat        drop |s_i| < ε (FAT-ε baseline, Sparsing Law §4.1).
  unit_mask  dense with a fixed 0/1 mask over the F units (layer-patterns §4.1).
  moe        SSD's sparse mode: experts = contiguous blocks of the (permuted) F axis,
             top-K by importance x·c_n, real sparse compute (`nn/moe.py`).

s is the gate score σ(W_gate x) for gated FFNs and a itself otherwise. A `unit_mask`, when
given, is applied in every mode (forward and gradient: masked units contribute exactly 0
and their parameters receive exactly 0 gradient through this path).

MoE: `FFN.hidden` computes (s, a) and `FFN.project` maps a to the output; the `moe` mode
(`nn/moe.py`) computes per-expert blocks of the same kernels instead, records no mask,
and sows the dropped-token count as `moe_dropped` when recording.

Recording: with `record` in {'mask', 'scores', 'both'} the FFN sows `mask` (bool, B×T×F,
the hidden-unit use after sparsification: a_i != 0, and ‖n_i‖ > record_threshold when a
record threshold is given — needed for activations without exact zeros) and/or `scores` (a, compute dtype) as nnx.Intermediate.
With record=None nothing is sown and nothing extra is computed. Collect records with
`nnx.capture(module, nnx.Intermediate)` (what `LM.apply` does).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sparsity_jax.nn.activations import get_activation
from sparsity_jax.nn.layers import get_initializer, param
from sparsity_jax.nn.moe import MoESpec, moe_ffn

Array = jax.Array

MODES = ("dense", "threshold", "topk", "fat", "unit_mask", "moe")
RECORD = (None, "mask", "scores", "both")


@struct.dataclass
class Sparsify:
    """How FFNs drop neurons in one forward call.

    `mode` is one mode for all layers or a tuple with one mode per layer. `threshold`
    is a scalar or (L,) array; `unit_mask` is (F,) or (L, F) (0/1 or bool); `k` (static)
    and `eps` serve `topk` and `fat`. `record_threshold` (None, scalar or (L,)) defines the
    recorded hidden-unit mask for activations without exact zeros (None: `a != 0`).
    """

    mode: str | tuple[str, ...] = struct.field(pytree_node=False, default="dense")
    k: int = struct.field(pytree_node=False, default=0)
    threshold: Array | float = 0.0
    eps: Array | float = 0.0
    unit_mask: Array | None = None
    record_threshold: Array | float | None = None
    moe: MoESpec | None = None

    def for_layer(self, i: int, num_layers: int) -> "Sparsify":
        """The settings of layer i (per-layer arrays sliced, per-layer modes picked)."""
        mode = self.mode if isinstance(self.mode, str) else self.mode[i]
        if not isinstance(self.mode, str) and len(self.mode) != num_layers:
            raise ValueError(f"Sparsify.mode has {len(self.mode)} entries for {num_layers} layers")
        pick = lambda v, nd: v[i] if (v is not None and jnp.ndim(v) == nd) else v  # noqa: E731
        return Sparsify(
            mode=mode,
            k=self.k,
            threshold=pick(self.threshold, 1),
            eps=pick(self.eps, 1),
            unit_mask=pick(self.unit_mask, 2),
            record_threshold=pick(self.record_threshold, 1),
            moe=None if self.moe is None else self.moe.for_layer(i),
        )


def _keep_threshold(s, a, mag, sp: Sparsify) -> Array:
    return mag >= sp.threshold


def _keep_topk(s, a, mag, sp: Sparsify) -> Array:
    if not 0 < sp.k <= s.shape[-1]:
        raise ValueError(f"topk mode needs 0 < k <= d_ff={s.shape[-1]}, got k={sp.k}")
    abs_s = jnp.abs(s)
    kth_BxTx1 = jax.lax.top_k(abs_s, sp.k)[0][..., -1:]
    return abs_s >= kth_BxTx1


def _keep_fat(s, a, mag, sp: Sparsify) -> Array:
    return jnp.abs(s) >= sp.eps


# mode -> keep-mask function (s, a, magnitudes, settings) -> bool B×T×F; None keeps all.
KEEP: dict[str, Callable | None] = {
    "dense": None,
    "unit_mask": None,
    "threshold": _keep_threshold,
    "topk": _keep_topk,
    "fat": _keep_fat,
    "moe": None,  # routed to `moe_ffn` before any keep mask
}


class FFN(nnx.Module):
    """Position-wise FFN `W_out σ(W_in x)` or gated `W_out [σ(W_gate x) ⊙ W_in x]`, no biases.

    Kernels (Flax layout): w_in, w_gate (d, F) with axes ('embed', 'mlp'); w_out (F, d)
    with axes ('mlp', 'embed').
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
        return jnp.linalg.norm(self.w_out[...].astype(jnp.float32), axis=-1)

    def sigma(self, x: Array) -> Array:
        if self.act.name == "fatrelu":
            return self.act.fn(x, self.fat_eps)
        return self.act.fn(x)

    def hidden(self, x_BxTxD: Array) -> tuple[Array, Array]:
        """Gate score s and activation scores a, both (B, T, F) in the compute dtype."""
        x = x_BxTxD.astype(self.dtype)
        h_BxTxF = x @ self.w_in[...].astype(self.dtype)
        if self.act.gated:
            s_BxTxF = self.sigma(x @ self.w_gate[...].astype(self.dtype))
            return s_BxTxF, s_BxTxF * h_BxTxF
        a_BxTxF = self.sigma(h_BxTxF)
        return a_BxTxF, a_BxTxF

    def project(self, a_BxTxF: Array) -> Array:
        """FFN output a @ W_out, (B, T, d)."""
        return a_BxTxF @ self.w_out[...].astype(self.dtype)

    def __call__(self, x_BxTxD: Array, sp: Sparsify = Sparsify(), record: str | None = None) -> Array:
        if sp.mode not in KEEP:
            raise ValueError(f"unknown FFN mode {sp.mode!r}; choose one of {', '.join(MODES)}")
        if record not in RECORD:
            raise ValueError(f"record must be one of {RECORD}, got {record!r}")
        if sp.mode == "moe":
            if sp.moe is None:
                raise ValueError("moe mode needs Sparsify(moe=MoESpec(...))")
            # Route each sequence separately (GShard-style groups): capacity is per
            # sequence and the batch axis stays the sharded axis, so data-parallel
            # meshes partition the dispatch instead of replicating it.
            def one_row(x_TxD):
                y, aux = moe_ffn(self, x_TxD[None], sp.moe.centres, **sp.moe.options())
                return y[0], aux["dropped"]

            y_BxTxD, dropped_B = jax.vmap(one_row)(x_BxTxD)
            if record is not None:
                self.sow(nnx.Intermediate, "moe_dropped", jnp.sum(dropped_B))
            return y_BxTxD
        s, a = self.hidden(x_BxTxD)
        keep_fn = KEEP[sp.mode]
        needs_mag = sp.mode == "threshold" or (record in ("mask", "both") and sp.record_threshold is not None)
        mag = jnp.abs(a).astype(jnp.float32) * self.out_norms() if needs_mag else None
        if keep_fn is not None:
            a = jnp.where(keep_fn(s, a, mag, sp), a, jnp.zeros_like(a))
        if sp.unit_mask is not None:
            a = a * sp.unit_mask.astype(a.dtype)
        if record in ("mask", "both"):
            used = a != 0 if sp.record_threshold is None else (a != 0) & (mag > sp.record_threshold)
            self.sow(nnx.Intermediate, "mask", used)
        if record in ("scores", "both"):
            self.sow(nnx.Intermediate, "scores", a)
        return self.project(a)

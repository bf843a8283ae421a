"""SSD's sparse (MoE) mode of the FFN: the SAME kernels, computed per expert (SSD §4.1–4.2).

Experts are contiguous blocks of the (already permuted, see `ssd/convert.py`) F axis; a
router scores them against fixed centres (SSD Eq. 4) and each token runs its top-K
experts with straight-through gates (App. A), so there are no new trainable parameters.
`moe_ffn` is the forward, with capacity, ragged or masked dispatch and dynamic top-k
(SSD §5.3).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Activate = Callable[[Array, "Array | None"], Array]  # (W_in x, W_gate x or None) -> a
DISPATCH = ("capacity", "ragged", "masked")


def centres_from_kernel(w_in_DxF: Array, num_experts: int) -> Array:
    """Router centres (N, d): c_n = mean of expert n's W_i rows = w_in[:, block_n].mean(1).

    SSD Eq. 4: the mean over the expert's E columns of w_in, passed to `moe_ffn` as a
    non-trained input (`MoESpec.centres`, made by `ssd.convert`). For gated FFNs we also
    use w_in (the up-projection, which is what the clustering groups), not w_gate: it
    keeps one rule for every FFN and matches the neurons the k-means saw; SSD App. E
    leaves GLUs open.
    """
    d, f = w_in_DxF.shape
    return jnp.mean(w_in_DxF.reshape(d, num_experts, f // num_experts), axis=-1).T


@jax.custom_vjp
def _unit_gates(x_SxD: Array, c_NxD: Array, experts_SxK: Array) -> Array:
    """Gates (S, K) = 1 + (α − sg(α)) with α_sk = x_s · c_{experts_sk}: exactly 1.0 forward
    (App. A), gradient of α. A custom VJP so the forward pass never computes α and the
    backward pass holds no (S, K, d) tensor (no gather of the centres per pair)."""
    return jnp.ones(experts_SxK.shape, x_SxD.dtype)


def _unit_gates_fwd(x_SxD, c_NxD, experts_SxK):
    return _unit_gates(x_SxD, c_NxD, experts_SxK), (x_SxD, c_NxD, experts_SxK)


def _unit_gates_bwd(res, g_SxK):
    x_SxD, c_NxD, experts_SxK = res
    s, n = x_SxD.shape[0], c_NxD.shape[0]
    # dα_SxN is g at the selected (token, expert) pairs, 0 elsewhere; then two plain matmuls
    rows_SxK = jnp.arange(s, dtype=experts_SxK.dtype)[:, None]
    g_SxN = jnp.zeros((s, n), g_SxK.dtype).at[rows_SxK, experts_SxK].add(g_SxK)
    dx_SxD = (g_SxN @ c_NxD.astype(g_SxN.dtype)).astype(x_SxD.dtype)
    dc_NxD = (g_SxN.T @ x_SxD.astype(g_SxN.dtype)).astype(c_NxD.dtype)
    return dx_SxD, dc_NxD, np.zeros(experts_SxK.shape, jax.dtypes.float0)


_unit_gates.defvjp(_unit_gates_fwd, _unit_gates_bwd)


@jax.custom_vjp
def _slot_gates(x_NxCxD: Array, c_NxD: Array) -> Array:
    """Gates (N, C) of the capacity slots, 1 + (α − sg(α)) with α_nc = x_nc · c_n: exactly
    1.0 forward, gradient of α. The backward works in the dispatched layout: dx_nc = g_nc·c_n
    (added to the gradient the expert matmuls already send through the gather) and
    dc_n = Σ_c g_nc·x_nc, 3·cf·S·K·d FLOPs instead of the 4·S·N·d of `_unit_gates`."""
    return jnp.ones(x_NxCxD.shape[:2], x_NxCxD.dtype)


def _slot_gates_fwd(x_NxCxD, c_NxD):
    return _slot_gates(x_NxCxD, c_NxD), (x_NxCxD, c_NxD)


def _slot_gates_bwd(res, g_NxC):
    x_NxCxD, c_NxD = res
    dx_NxCxD = (g_NxC[..., None] * c_NxD.astype(g_NxC.dtype)[:, None, :]).astype(x_NxCxD.dtype)
    dc_NxD = jnp.einsum("nc,ncd->nd", g_NxC, x_NxCxD.astype(g_NxC.dtype)).astype(c_NxD.dtype)
    return dx_NxCxD, dc_NxD


_slot_gates.defvjp(_slot_gates_fwd, _slot_gates_bwd)


def _select(x_SxD: Array, c_NxD: Array, top_k: int, drop_share: float = 0.0):
    """Top-K experts of α = x·cᵀ (S·N·d multiply-adds, no gradient) and keep_SxK, False
    for the pairs that dynamic top-k removes (the lowest `drop_share` of all S·K by α)."""
    alpha_SxN = jax.lax.stop_gradient(x_SxD) @ jax.lax.stop_gradient(c_NxD).T
    top_SxK, experts_SxK = jax.lax.top_k(alpha_SxN, top_k)
    keep_SxK = jnp.ones(experts_SxK.shape, bool)
    if drop_share > 0.0:
        n_pairs = experts_SxK.size
        n_keep = n_pairs - int(math.floor(drop_share * n_pairs))
        order_P = jnp.argsort(-top_SxK.reshape(-1), stable=True)
        rank_P = jnp.zeros(n_pairs, jnp.int32).at[order_P].set(jnp.arange(n_pairs, dtype=jnp.int32))
        keep_SxK = (rank_P < n_keep).reshape(experts_SxK.shape)
    return experts_SxK.astype(jnp.int32), keep_SxK


def route(x_SxD: Array, centres_NxD: Array, top_k: int, drop_share: float = 0.0, router_grad: bool = True):
    """Top-K routing: (experts_SxK int32, gates_SxK (1.0 forward, α gradient), keep_SxK).
    With router_grad=False the gates are constant 1.0 (no gradient to x or the centres).

    keep_SxK is False for pairs removed by dynamic top-k (their gate is also 0).
    The ragged and masked dispatches use these per-pair gates; the capacity dispatch
    gates its slots instead (`_slot_gates`, the same values and gradients for every
    pair that gets a slot, and cheaper).

    Cost: the selection needs α for all N experts (S·N·d multiply-adds, no gradient).
    The gates' backward (`_unit_gates`) scatters the (S, K) cotangent into an (S, N)
    one and takes dx = G·c, dc = Gᵀ·x as plain matmuls (2·S·N·d multiply-adds), the
    same values and gradients as differentiating `1 + (α − sg(α))` through x·cᵀ. Not
    through the K gathered centres c[experts] (2·S·K·d): that keeps an (S, K, d)
    tensor for the backward pass and scatter-adds another into dc (S = 8192, K = 6,
    d = 768, f32: 302 MB temp vs 1.6 MB, 682 MB vs 84 MB accessed, on CPU).
    """
    c_NxD = centres_NxD.astype(x_SxD.dtype)
    experts_SxK, keep_SxK = _select(x_SxD, c_NxD, top_k, drop_share)
    gates_SxK = _unit_gates(x_SxD, c_NxD, experts_SxK) if router_grad else jnp.ones(experts_SxK.shape, x_SxD.dtype)
    gates_SxK = jnp.where(keep_SxK, gates_SxK, 0.0)
    return experts_SxK, gates_SxK, keep_SxK


def expert_kernels(kernels: dict[str, Array], num_experts: int) -> dict[str, Array]:
    """Per-expert blocks of the FFN kernels (in/gate (d, F), out (F, d)): in/gate
    (N, d, E), out (N, E, d)."""
    d, f = kernels["in"].shape
    e = f // num_experts
    split_in = lambda w: w.reshape(d, num_experts, e).transpose(1, 0, 2)  # noqa: E731
    out = {"in": split_in(kernels["in"]), "out": kernels["out"].reshape(num_experts, e, d)}
    if "gate" in kernels:
        out["gate"] = split_in(kernels["gate"])
    return out


def _capacity(act: Activate, x_SxD, c_NxD, experts_SxK, keep_SxK, w, capacity_factor, router_grad=True):
    s, k = experts_SxK.shape
    n, _, e = w["in"].shape
    cap = max(1, math.ceil(capacity_factor * s * k / n))
    # pairs in priority order: choice rank major, then token (P = K·S)
    exp_P = jnp.where(keep_SxK, experts_SxK, n).T.reshape(-1)
    tok_P = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (k, s)).reshape(-1)
    order_P = jnp.argsort(exp_P, stable=True)
    counts_N1 = jnp.bincount(exp_P, length=n + 1)
    starts_N1 = jnp.cumsum(counts_N1) - counts_N1
    pos_P = jnp.zeros_like(exp_P).at[order_P].set(jnp.arange(exp_P.size, dtype=jnp.int32) - starts_N1[exp_P[order_P]])
    fits_P = (exp_P < n) & (pos_P < cap)
    slot_P = jnp.where(fits_P, exp_P * cap + pos_P, n * cap)  # n·cap = out of range → dropped
    tok_of_slot = jnp.full(n * cap, s, jnp.int32).at[slot_P].set(tok_P, mode="drop")
    x_pad = jnp.concatenate([x_SxD, jnp.zeros((1, x_SxD.shape[1]), x_SxD.dtype)])
    x_NxCxD = x_pad[tok_of_slot].reshape(n, cap, -1)
    # empty slots gather the zero row: gate 0 there (no output, no gradient)
    gate_NxC = (tok_of_slot < s).reshape(n, cap).astype(x_SxD.dtype)
    if router_grad:
        gate_NxC = _slot_gates(x_NxCxD, c_NxD) * gate_NxC
    h_NxCxE = jnp.einsum("ncd,nde->nce", x_NxCxD, w["in"])
    g_NxCxE = jnp.einsum("ncd,nde->nce", x_NxCxD, w["gate"]) if "gate" in w else None
    # gate on the E hidden units, not the d outputs: same product, E/d of the cost
    a_NxCxE = act(h_NxCxE, g_NxCxE) * gate_NxC[..., None].astype(h_NxCxE.dtype)
    y_NxCxD = jnp.einsum("nce,ned->ncd", a_NxCxE, w["out"])
    y_SxD = jnp.zeros_like(x_pad).at[tok_of_slot].add(y_NxCxD.reshape(n * cap, -1))[:s]
    dropped = jnp.sum((exp_P < n) & ~fits_P)
    return y_SxD, {"dropped": dropped, "capacity": cap}


def _ragged(act: Activate, x_SxD, experts_SxK, gates_SxK, keep_SxK, w):
    s, k = experts_SxK.shape
    n = w["in"].shape[0]
    exp_P = jnp.where(keep_SxK, experts_SxK, n).reshape(-1)  # dynamic-top-k drops sort last
    order_P = jnp.argsort(exp_P, stable=True)
    tok_P = (jnp.arange(s * k, dtype=jnp.int32) // k)[order_P]
    gate_P = gates_SxK.reshape(-1)[order_P]
    sizes_N = jnp.bincount(exp_P, length=n + 1)[:n].astype(jnp.int32)  # rows past Σ → 0
    xs_PxD = x_SxD[tok_P]
    h_PxE = jax.lax.ragged_dot(xs_PxD, w["in"], sizes_N)
    g_PxE = jax.lax.ragged_dot(xs_PxD, w["gate"], sizes_N) if "gate" in w else None
    y_PxD = jax.lax.ragged_dot(act(h_PxE, g_PxE), w["out"], sizes_N)
    y_SxD = jnp.zeros_like(x_SxD).at[tok_P].add(y_PxD * gate_P[:, None].astype(y_PxD.dtype))
    return y_SxD, {"dropped": jnp.zeros((), jnp.int32)}


def _masked(act: Activate, x_SxD, experts_SxK, gates_SxK, keep_SxK, w):
    n, d, e = w["in"].shape
    dense_in = lambda w_NxDxE: w_NxDxE.transpose(1, 0, 2).reshape(d, n * e)  # noqa: E731
    a_SxF = act(x_SxD @ dense_in(w["in"]), x_SxD @ dense_in(w["gate"]) if "gate" in w else None)
    weight_SxN = jnp.zeros((x_SxD.shape[0], n), a_SxF.dtype)
    weight_SxN = weight_SxN.at[jnp.arange(x_SxD.shape[0])[:, None], experts_SxK].add(gates_SxK.astype(a_SxF.dtype))
    y_SxD = (a_SxF * jnp.repeat(weight_SxN, e, axis=1)) @ w["out"].reshape(n * e, d)
    return y_SxD, {"dropped": jnp.zeros((), jnp.int32)}


def moe_ffn(
    kernels: dict[str, Array],
    act: Activate,
    x_BxTxD: Array,
    centres_NxD: Array,
    *,
    num_experts: int,
    top_k: int,
    dispatch: str = "capacity",
    capacity_factor: float = 1.25,
    drop_share: float = 0.0,
    router_grad: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """The FFN's MoE forward (SSD Eq. 2 with the Eq. 4 router and App. A gates).

    Expert n owns neurons [n·E, (n+1)·E) with E = F/N, i.e. w_in[:, block] (d, E),
    w_gate likewise, w_out[block, :] (E, d) (`expert_kernels`):

      α_n   = x · c_n                         (SSD Eq. 4; c_n = mean of expert n's W_i rows)
      sel   = top-K of α per token            (the remaining experts get α = 0)
      α_sel ← 1 + (α − stop_gradient(α))      (App. A: exactly 1 forward, router grads kept;
                                              router_grad=False: plain 1, no router gradient)
      y     = Σ_sel α_n · W_out,n σ(W_in,n x) (Eq. 2; gated: σ(W_gate,n x) ⊙ W_in,n x)

    With K = N this is the dense FFN (up to summation order). `1 + (α − sg(α))` is written
    with the inner difference first so the forward value is exactly 1.0 (`1 + α − sg(α)`
    in float rounds to 1 ± ulp(α)).

    The router gradient is straight-through: the forward value of a gate never depends on
    α, so d loss/dα_n = ⟨dL/dy, y_n⟩ is a gradient with no forward counterpart (with
    K = N the forward is the dense FFN but the gradient is not: Σ_n ⟨dL/dy, y_n⟩ c_n is
    added to dx, and to W_in through the centres). `router_grad=False` gives constant
    gates, so K = N trains exactly as dense. With the gradient, MoE training from scratch
    and SSD's sparse phases diverge (measurements in the README), so the trainer's
    `method.router_grad` defaults to false for every method; this function keeps the
    paper's formula as its default.

    Dispatch (real sparse compute, selected by `dispatch`):
      capacity  gather each expert's tokens into (N, C, d) with C = ceil(cf · S · K / N)
                (S = B·T tokens), batched matmuls with the (N, d, E) / (N, E, d) blocks,
                scatter-add back (α applied to the E hidden units of each slot, which
                is cheaper than to its d outputs). Priority: all first choices (in token
                order), then all second choices, ... (GShard/Switch convention); a
                (token, expert) pair beyond the expert's C slots is dropped (counted in
                aux["dropped"]). The router costs the selection x·cᵀ for all N experts
                (no gradient) and a backward in the dispatched layout (`_slot_gates`),
                not the two (S, N) matmuls of the per-pair gates nor a backward through
                K gathered centres (an (S, K, d) buffer).
      ragged    dropless grouped matmuls with `jax.lax.ragged_dot` on the (token, expert)
                pairs sorted by expert. Note: on CPU XLA lowers ragged_dot to a dense
                product over all groups (N× the FLOPs), and on GPU it is slower than
                capacity too; use capacity.
      masked    reference only: the dense FFN with the unselected experts' units zeroed.
    Capacity and ragged equal the masked reference (values and gradients, with and
    without dynamic top-k); on CPU the tests check both against it.

    Args:
      kernels: the FFN's kernels in the compute dtype (`FFN.kernels()`: in, optional gate
        (d, F), out (F, d)), F already permuted into N contiguous experts.
      act: activation scores from the pre-activations (`FFN.activate`).
      x_BxTxD: input (any leading shape (..., d)).
      centres_NxD: router centres (non-trained; with router_grad, gradients flow to it and to x).
      num_experts: N, must divide F. top_k: K in [1, N].
      dispatch: 'capacity' | 'ragged' | 'masked' (see above).
      capacity_factor: capacity path only; C = ceil(cf · tokens · K / N).
      drop_share: dynamic top-k (SSD §5.3): the tokens·K candidate pairs of the whole
        call are ranked by α and this share with the lowest α is dropped, so important
        tokens keep more experts than unimportant ones (ties broken by position);
        0 = fixed top-K.
      router_grad: straight-through α gradient of the gates (App. A); False: constant gates.

    Returns:
      y: same shape as x, compute dtype.
      aux: dropped (int, pairs over capacity), load_N (pairs routed to each expert,
        before capacity), plus capacity (int) for the capacity path.
    """
    f = kernels["in"].shape[1]
    if num_experts < 1 or f % num_experts:
        raise ValueError(f"num_experts={num_experts} must divide d_ff={f}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch={dispatch!r} is not one of {', '.join(DISPATCH)}")
    if not 0.0 <= drop_share < 1.0 or capacity_factor <= 0:
        raise ValueError(f"need 0 <= drop_share < 1 and capacity_factor > 0, got {drop_share}, {capacity_factor}")
    lead, d = x_BxTxD.shape[:-1], x_BxTxD.shape[-1]
    x_SxD = x_BxTxD.astype(kernels["in"].dtype).reshape(-1, d)
    w = expert_kernels(kernels, num_experts)
    if dispatch == "capacity":
        c_NxD = centres_NxD.astype(x_SxD.dtype)
        experts_SxK, keep_SxK = _select(x_SxD, c_NxD, top_k, drop_share)
        y_SxD, aux = _capacity(act, x_SxD, c_NxD, experts_SxK, keep_SxK, w, capacity_factor, router_grad)
    else:
        experts_SxK, gates_SxK, keep_SxK = route(x_SxD, centres_NxD, top_k, drop_share, router_grad)
        y_SxD, aux = (_ragged if dispatch == "ragged" else _masked)(act, x_SxD, experts_SxK, gates_SxK, keep_SxK, w)
    aux["load_N"] = jnp.bincount(jnp.where(keep_SxK, experts_SxK, num_experts).reshape(-1), length=num_experts + 1)[:-1]
    return y_SxD.reshape(*lead, d), aux

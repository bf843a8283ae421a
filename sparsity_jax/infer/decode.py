"""KV-cache decoding of an `LM` with a dense or sparse FFN (`Decoder.generate`).

Every call is the model's own forward (`LM.forward` with its KV cache) rebuilt from
(graphdef, params) inside pure jitted functions, so a `scan_layers` model decodes under
its scan; the FFN hook runs the gather tables and the `Sparsify` arrays (stacked (L, ...)
like the blocks and scanned with them) in the gathered form of the mode
(`infer.gathered`). Prefill runs the prompt (left-padded, see `infer.cache`) through the
masked form of the mode in one call; every later step feeds one token per row through
the sparse form when `budgets` are given (else the masked form: the reference), a layer
of a scan choosing among the union of all layers' budgets only its own
(`_Static.layer_budgets`). Each function compiles once per (batch, prompt length, cache
length); the cache and the running statistics are donated, so steps update them in place.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sparsity_jax.infer.cache import KVCache, cache_spec, init_cache, left_pad
from sparsity_jax.infer.gathered import (
    CHUNK, TABLE_KEYS, Act, build_tables, decode_sparsify, layer_ffn, specs, table_specs,
)
from sparsity_jax.infer.sampling import sample
from sparsity_jax.nn.activations import ACTIVATIONS
from sparsity_jax.nn.model import FFNHook
from sparsity_jax.nn.sparsify import Sparsify
from sparsity_jax.nn.stack import PerLayer
from sparsity_jax.devices import sharding as shd

Array = jax.Array
STATS = ("kept", "rows", "union", "read", "over", "dense", "tokens")


def place(model: nnx.Module, mesh) -> tuple[Any, dict]:
    """(graphdef, params as a pure dict placed with the training shardings on `mesh`)."""
    graphdef, state = nnx.split(model, nnx.Param)
    params = jax.device_put(nnx.to_pure_dict(state), shd.param_shardings(state, mesh))
    return graphdef, params


def tensor_axis(mesh, d_ff: int) -> str | None:
    """'tensor' when the mesh has a tensor axis that divides F (the FFN is then sharded), else None."""
    n = mesh.shape.get("tensor", 1)
    return "tensor" if n > 1 and d_ff % n == 0 else None


@dataclasses.dataclass(frozen=True)
class _Static:
    graphdef: Any
    mesh: Any
    axis: str | None
    budgets: tuple | None
    chunk: int
    d_ff: int
    block: int = 0
    kernel: str = "auto"

    def layer_budgets(self, n: int, scanned: bool) -> tuple[tuple, Any]:
        """(each layer's static budgets, its `allowed` flags (L, S) or None). Unrolled, layer
        i gets budgets[i]; scanned, every layer gets the sorted union of all layers' budgets
        and flags marking its own, so the layers share one static and decode under one scan
        (each still uses only its own budgets)."""
        if self.budgets is None:
            return (None,) * n, None
        if not scanned:
            return self.budgets, None
        sizes = tuple(sorted({k for b in self.budgets for k in b}))
        return (sizes,) * n, jnp.asarray([[k in b for k in sizes] for b in self.budgets], bool).reshape(n, -1)

    def ffn(self, sparsify: Sparsify | tuple, tables, sparse: bool) -> FFNHook:
        """The `LM.forward` FFN hook over the `Sparsify` arrays and the tables, stacked
        (L, ...) and scanned with the layers, or tuples of one per layer. Records {kept_N
        (L, N), rows, union, read, over, dense (L,)} in the sparse form (layer i under its
        budgets); {kept, candidates (L, B, T, F)} in the masked form."""
        n = len(tables) if isinstance(tables, tuple) else jax.tree.leaves(tables)[0].shape[0]
        statics, allowed = (None,) * n, None
        if sparse:
            statics, allowed = self.layer_budgets(n, scanned=not isinstance(tables, tuple))

        def run(ffn_module, h_BxTxD, xs_i, static_i):
            sp, tab, allowed_S = xs_i
            b, t, d = h_BxTxD.shape
            out = layer_ffn(sp, tab, h_BxTxD.reshape(b * t, d), Act.of(ffn_module), mesh=self.mesh, axis=self.axis,
                            budgets=static_i, allowed_S=allowed_S, chunk=self.chunk, block=self.block,
                            kernel=self.kernel)
            y_BxTxD = out[0].reshape(b, t, d)
            if static_i is not None:
                return y_BxTxD, out[1]
            return y_BxTxD, {"kept": out[1].reshape(b, t, -1), "candidates": out[2].reshape(b, t, -1)}

        per_layer = lambda x: PerLayer(x) if isinstance(x, tuple) else x  # noqa: E731  (an unrolled model's)
        return FFNHook(run, (per_layer(sparsify), per_layer(tables), allowed), statics)


def _cached_forward(st: _Static, params, tables, sparsify, cache: KVCache, tokens_BxT, start, sparse: bool):
    model = nnx.merge(st.graphdef, params)
    return model.forward(tokens_BxT, cache=cache, start=start, ffn=st.ffn(sparsify, tables, sparse))


def _next(logits_BxV, key, temperature, top_p, greedy: bool) -> Array:
    """Greedy decoding is its own compiled variant: no sampling code (threefry compiles slowly on CPU)."""
    return jnp.argmax(logits_BxV, -1).astype(jnp.int32) if greedy else sample(logits_BxV, key, temperature, top_p)


def _prefill(st, params, tables, sparsify, cache, tokens_BxP, key, temperature, top_p, *, greedy):
    out = _cached_forward(st, params, tables, sparsify, cache, tokens_BxP, jnp.int32(0), False)
    logits_BxPxV, cache = out.logits, out.cache
    return _next(logits_BxPxV[:, -1], key, temperature, top_p, greedy), logits_BxPxV, cache


def _step_stats(records: dict[str, Array], b: int, f: int, sparse: bool) -> dict[str, Array]:
    """One decode step's (L,) statistics (STATS but tokens) from the FFN hook's records."""
    if sparse:
        r = records
        add = {"kept": jnp.sum(r["kept_N"], axis=1), "rows": r["rows"], "union": r["union"], "read": r["read"],
               "over": b * r["over"], "dense": b * r["dense"]}
    else:
        n = records["kept"].shape[0]
        full = jnp.full((n,), f, jnp.int32)
        add = {"kept": jnp.sum(records["kept"], axis=(1, 2, 3)), "rows": full,
               "union": jnp.sum(jnp.any(records["candidates"], axis=(1, 2)), axis=-1), "read": full,
               "over": jnp.zeros((n,), jnp.int32), "dense": jnp.full((n,), b, jnp.int32)}
    return {k: v.astype(jnp.float32) for k, v in add.items()}


def _step(st, params, tables, sparsify, cache, tok_B, start, key, temperature, top_p, totals, *, greedy):
    sparse = st.budgets is not None
    out = _cached_forward(st, params, tables, sparsify, cache, tok_B[:, None], start, sparse)
    logits_Bx1xV, cache, records = out.logits, out.cache, out.records
    b = tok_B.shape[0]
    add = dict(_step_stats(records, b, st.d_ff, sparse), tokens=jnp.float32(b))
    totals = {k: totals[k] + add[k] for k in STATS}
    logits_BxV = logits_Bx1xV[:, 0]
    return _next(logits_BxV, key, temperature, top_p, greedy), logits_BxV, cache, totals


def masked_forward(graphdef, params, tables, sparsify, tokens_BxT, segment_ids_BxT, positions_BxT, *, mesh=None,
                   axis=None, logits: bool = True):
    """Full sequences (packed segments allowed) through the mode's masked FFN, no cache:
    (logits (B, T, V), or None without `logits`, candidates (L, B, T, F) bool). The
    reference of the sparse forms and the source of `infer.budget`'s statistics (call
    under jit)."""
    st = _Static(graphdef, mesh, axis, None, 0, 0)
    model = nnx.merge(graphdef, params)
    out = model.forward(tokens_BxT, segment_ids_BxT, positions_BxT, ffn=st.ffn(sparsify, tables, False), head=logits)
    return out.logits, out.records["candidates"]


@dataclasses.dataclass
class Generation:
    """What `Decoder.generate` produced; seconds exclude compilation."""

    tokens: np.ndarray  # (B, max_new) int32, the generated tokens
    logits: np.ndarray | None  # (B, max_new, V) float32 when asked for: the logits each token was drawn from
    prefill_s: float
    decode_s: float  # the max_new − 1 one-token steps after prefill
    stats: dict[str, np.ndarray]  # (L,) sums over decode steps: kept, rows, union, read, over, dense; tokens (scalar)

    def tokens_per_s(self) -> float:
        return float(self.stats["tokens"]) / self.decode_s if self.decode_s > 0 else float("nan")

    def shares(self, d_ff: int) -> tuple[np.ndarray, np.ndarray]:
        """(L,) each: the active share (kept neurons per decoded token / F) and the computed
        share (neurons multiplied per decode step, all rows together / F)."""
        n = max(float(self.stats["tokens"]), 1.0)
        steps = max(n / self.tokens.shape[0], 1.0)
        return self.stats["kept"] / n / d_ff, self.stats["rows"] / steps / d_ff

    def union_shares(self, d_ff: int) -> tuple[np.ndarray, np.ndarray]:
        """(L,) each, per decode step: the neuron share of the union of the rows' candidates
        and the share of neurons in the blocks it touches (the block-active share; equal
        to the first without blocks)."""
        steps = max(float(self.stats["tokens"]) / self.tokens.shape[0], 1.0)
        return self.stats["union"] / steps / d_ff, self.stats["read"] / steps / d_ff


class Decoder:
    """Jitted KV-cache decoding of one model on a mesh with one sparsity mode.

    `sparsify`: the FFN's `Sparsify`, as the masked forward takes it, in one of
    `infer.gathered.MODES`: dense, threshold (scalar or (L,) `threshold`) or predicted
    (a stacked `PredictorSpec`, score > 0.5); decoding gathers what the mode keeps.
    `budgets`: per layer, an ascending tuple of per-shard neuron budgets for the sparse
    form (`infer.budget.budgets_for`); None decodes with the masked form (dense work).
    `chunk`: rows gathered per block in the sparse products (0 = one gather; `infer.gathered.CHUNK`).
    `block`: b > 0 gathers whole contiguous blocks of b neurons (budgets multiples of b);
    `kernel`: their implementation (`infer.kernels.KERNELS`, "auto" = the backend's).
    """

    def __init__(self, graphdef, params, mesh, sparsify: Sparsify = Sparsify(), *, budgets: tuple | None = None,
                 chunk: int = CHUNK, block: int = 0, kernel: str = "auto"):
        model = nnx.merge(graphdef, params)
        self.cfg, self.mesh, self.params, self.graphdef = model.cfg, mesh, params, graphdef
        self.axis, self.chunk, self.block, self.kernel = tensor_axis(mesh, self.cfg.d_ff), chunk, block, kernel
        if block and (self.cfg.d_ff // self.shards) % block:
            raise ValueError(f"block {block} must divide the per-shard F {self.cfg.d_ff // self.shards}")
        sparsify = decode_sparsify(sparsify, self.cfg.num_layers, self.cfg.d_model, self.cfg.d_ff)
        keys = TABLE_KEYS[sparsify.mode][ACTIVATIONS[self.cfg.activation].gated]

        def tables(params):  # like the blocks: stacked (L, ...) to scan, else one dict per layer (`stack.PerLayer`)
            model = nnx.merge(graphdef, params)
            if model.cfg.scan_layers:
                return build_tables(model.ffns(), keys)
            return tuple(build_tables(blk.ffn, keys) for blk in model.blocks)

        shapes = jax.eval_shape(tables, params)
        tab_specs = table_specs(shapes[0] if isinstance(shapes, tuple) else shapes, self.axis)
        lead = () if isinstance(shapes, tuple) else (None,)
        sh = {k: NamedSharding(mesh, P(*lead, *s)) for k, s in tab_specs.items()}
        self.tables = jax.jit(tables, out_shardings=(sh,) * len(shapes) if isinstance(shapes, tuple) else sh)(params)
        sp_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs(sparsify, self.axis, lead=(None,)))
        self.sparsify = jax.device_put(sparsify, sp_sh)  # its arrays stacked (L, ...)
        # what the layers read: the stacked arrays under a scan, else one slice per layer, like the tables
        self.layer_sparsify = self.sparsify if not isinstance(shapes, tuple) else tuple(
            jax.tree.map(lambda v, i=i: v[i], self.sparsify) for i in range(len(shapes)))
        self._candidates = jax.jit(functools.partial(masked_forward, graphdef, mesh=mesh, axis=self.axis),
                                   static_argnames="logits")
        self.set_budgets(budgets)

    @property
    def shards(self) -> int:
        """How many ways the FFN's neurons are split (budgets are per shard)."""
        return self.mesh.shape["tensor"] if self.axis else 1

    def set_budgets(self, budgets: tuple | None) -> None:
        """Per-layer ascending per-shard budgets of the sparse form; None: masked form."""
        if budgets is not None:
            budgets = tuple(tuple(int(k) for k in b) for b in budgets)
            f_local = self.cfg.d_ff // self.shards
            if len(budgets) != self.cfg.num_layers or any(
                    list(b) != sorted(set(b)) or any(not 0 < k <= f_local or k % max(self.block, 1) for k in b)
                    for b in budgets):
                raise ValueError(f"budgets need one ascending tuple of sizes in [1, {f_local}] (multiples of the "
                                 f"block {self.block}) per layer ({self.cfg.num_layers}), got {budgets}")
        self.budgets = budgets
        self.static = _Static(self.graphdef, self.mesh, self.axis, budgets, self.chunk, self.cfg.d_ff, self.block,
                              self.kernel)
        if not hasattr(self, "_prefill"):  # prefill runs the masked form: it never depends on budgets
            self._prefill = jax.jit(functools.partial(_prefill, dataclasses.replace(self.static, budgets=None)),
                                    donate_argnums=(3,), static_argnames="greedy")
            self._prefills: dict[tuple, Any] = {}
        self._step = jax.jit(functools.partial(_step, self.static), donate_argnums=(3, 9), static_argnames="greedy")
        self._steps: dict[tuple, Any] = {}

    def candidates(self, batch: dict[str, Array], logits: bool = True) -> tuple[Array | None, Array]:
        """(logits (B, T, V) or None without `logits`, candidates (L, B, T, F)) of a packed
        batch (inputs, segment_ids, positions) through the mode's masked FFN."""
        return self._candidates(self.params, self.tables, self.layer_sparsify, batch["inputs"],
                                batch["segment_ids"], batch["positions"], logits=logits)

    def _new_cache(self, pad_B: Array, length: int) -> KVCache:
        sh = cache_spec(self.cfg, pad_B.shape[0], length, self.mesh)
        cache = init_cache(self.cfg, pad_B, length)
        return jax.device_put(cache, KVCache(sh, sh, NamedSharding(self.mesh, P())))

    def _zeros(self) -> dict[str, Array]:
        n = self.cfg.num_layers
        return {k: jnp.zeros((), jnp.float32) if k == "tokens" else jnp.zeros((n,), jnp.float32) for k in STATS}

    def _functions(self, cache, tokens_BxP, key, scal):
        """The compiled prefill and step for these shapes (compiled ahead, so timings never include it)."""
        greedy = bool(scal[0] <= 0)
        pre_key = (tokens_BxP.shape, cache.length, greedy)
        step_key = (tokens_BxP.shape[0], cache.length, greedy)
        if pre_key not in self._prefills:
            self._prefills[pre_key] = self._prefill.lower(self.params, self.tables, self.layer_sparsify, cache,
                                                          tokens_BxP, key, *scal, greedy=greedy).compile()
        if step_key not in self._steps:
            self._steps[step_key] = self._step.lower(self.params, self.tables, self.layer_sparsify, cache,
                                                     tokens_BxP[:, 0], jnp.int32(0), key, *scal, self._zeros(),
                                                     greedy=greedy).compile()
        return self._prefills[pre_key], self._steps[step_key]

    def generate(self, prompts: list[list[int]], max_new: int, *, key: Array | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, keep_logits: bool = False) -> Generation:
        """Generates `max_new` tokens after each prompt (token-id lists, left-padded)."""
        if max_new < 1:
            raise ValueError(f"max_new must be ≥ 1, got {max_new}")
        key = jax.random.key(0) if key is None else key
        tokens_BxP, pad_B = left_pad(prompts)
        p = tokens_BxP.shape[1]
        scal = (jnp.float32(temperature), jnp.float32(top_p))
        cache = self._new_cache(pad_B, p + max_new)
        prefill, step = self._functions(cache, tokens_BxP, key, scal)
        t0 = time.perf_counter()
        tok_B, logits_BxPxV, cache = prefill(self.params, self.tables, self.layer_sparsify, cache, tokens_BxP,
                                             jax.random.fold_in(key, 0), *scal)
        jax.block_until_ready(tok_B)
        t1 = time.perf_counter()
        toks, logits, totals = [tok_B], [logits_BxPxV[:, -1]], self._zeros()
        for i in range(max_new - 1):
            tok_B, logits_BxV, cache, totals = step(self.params, self.tables, self.layer_sparsify, cache, tok_B,
                                                    jnp.int32(p + i), jax.random.fold_in(key, i + 1), *scal, totals)
            toks.append(tok_B)
            if keep_logits:
                logits.append(logits_BxV)
        jax.block_until_ready((toks[-1], totals))
        t2 = time.perf_counter()
        return Generation(np.stack(jax.device_get(toks), 1), np.stack(jax.device_get(logits), 1) if keep_logits
                          else None, t1 - t0, t2 - t1, jax.device_get(totals))

"""Memory of the PPL-p% search on a mesh, and the time of its cache and stream modes.

Part 1 (compile only, nothing allocated): the per-device peak of each compiled program of
the PPL-p% search at a shape where the cached scores dominate — the dense-pass step (one
batch's forward and its scores written into the cache), the threshold search (a
`find_prepared` call: ≤ 8 evaluations and the exact finish over all blocks) and the
sparse step — on 1 device and on 8 (fake CPU) devices; peak = arguments + outputs +
temporaries − donated aliases (XLA memory analysis of the partitioned module, i.e. per
device). The search's peak is reported for the cache mode and for the stream mode with
2 and 8 validation batches (target: independent of the number of batches).

Part 2 (run): the dense pass + one threshold search, and the whole PPL-1% search, in
cache and stream mode on a small random-weight model, in alternating rounds (median).

    .venv/bin/python bench/search_memory.py [--ffn 4096 --layers 4 --d 256 --seq 512 --batch 16
                                             --batches 8] [--skip-time]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparsity_jax.metrics.threshold_pass import Scores  # noqa: E402
from sparsity_jax.metrics.threshold_search import PreparedSearch, _default_window, _search, setup  # noqa: E402
from sparsity_jax.nn.sparsify import Sparsify  # noqa: E402
from sparsity_jax.search.ppl import PplSearch  # noqa: E402
from sparsity_jax.search.thresholds import (  # noqa: E402
    _StreamScores, _dense_step, _sparse_step, cache_thresholds, dense_pass, search_placement, threshold_sparsify,
)
from sparsity_jax.settings import load  # noqa: E402
from sparsity_jax.methods import make_method  # noqa: E402
from sparsity_jax.train.setup import build  # noqa: E402
from tests.train.helpers import synthetic_batch  # noqa: E402

VOCAB = 259
GiB = float(1 << 30)


def make_run(args, mesh: dict, devices=None):
    over = {"model.d_model": args.d, "model.num_layers": args.layers, "model.num_heads": 4, "model.d_ff": args.ffn,
            "train.seq_len": args.seq, "train.global_batch_size": args.batch, **mesh}
    return build(load("configs/default.py", {k: str(v) for k, v in over.items()}), VOCAB, make_method, devices=devices)


def sds(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def peak(compiled) -> int:
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def abstract_programs(run, nb: int, mode: str, dtype=jnp.float32) -> dict:
    """Per-device peak bytes of the dense step, the search and the sparse step (compile only)."""
    L, F, d = run.model_cfg.num_layers, run.model_cfg.d_ff, run.model_cfg.d_model
    batch = run.abstract_batch()
    placement = search_placement([batch], F, run.mesh if run.mesh.size > 1 else None)
    sh = lambda kind, ndim: None if placement.mesh is None else NamedSharding(  # noqa: E731
        placement.mesh, P(None, *placement.spec(kind, ndim)))
    B, T = batch["inputs"].shape
    params = run.abstract_state["params"]
    w_out = sds((L, F, d), jnp.float32, None if placement.mesh is None else placement.sharding("w_out", 3))
    real = sds((nb, B, T), jnp.bool_, sh("tokens", 2))
    inv_norm = sds((nb, L, B, T), jnp.float32, sh("layer_tokens", 3))
    cache = sds((nb, L, B, T, F), dtype, sh("scores", 4)) if mode == "cache" else None
    if mode == "cache":
        scores = Scores(cache, None, placement, nb)
    else:
        stacked = {k: sds((nb,) + v.shape, v.dtype, sh("tokens", 2)) for k, v in batch.items()}
        scores = Scores(None, (params, stacked), placement, nb, compute=_StreamScores(run.graphdef, np.dtype(dtype)))
    _, ctx, proxy = jax.eval_shape(setup, scores, w_out, real)
    prep = PreparedSearch(scores, w_out, real, inv_norm, ctx, proxy)
    target = jnp.zeros((L, 1), jnp.float32)
    window = _default_window(nb * B * T, F)
    out = {"search": peak(_search.lower(prep, target, window=window, max_evaluations=64).compile())}
    P_ = proxy.shape[1]
    proxy_ids = (jnp.zeros((P_,), jnp.int32), jnp.zeros((P_,), jnp.int32))
    out["dense step"] = peak(_dense_step.lower(run.graphdef, params, batch, jnp.int32(0), cache, inv_norm, proxy_ids,
                                               placement, np.dtype(dtype)).compile())
    sparse = peak(_sparse_step.lower(run.graphdef, params, batch, threshold_sparsify(np.zeros(L))).compile())
    out["sparse step (+cache)"] = sparse + (0 if cache is None else _bytes(cache))
    return out


def _bytes(x) -> int:
    n = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    sharding = x.sharding
    return n if sharding is None else n // int(np.prod([sharding.mesh.shape[a] for a in _axes(sharding.spec)]) or 1)


def _axes(spec):
    return [n for e in spec for n in ((e,) if isinstance(e, str) else e or ())]


def memory(args) -> None:
    runs = {"1 device": make_run(args, {"mesh.data": 1}, jax.devices()[:1]),
            "8 devices data=8": make_run(args, {"mesh.data": 8}),
            "8 devices data=4,tensor=2": make_run(args, {"mesh.data": 4, "mesh.tensor": 2})}
    tokens = args.batches * args.batch * args.seq
    cache_gib = tokens * args.layers * args.ffn * 4 / GiB
    print(f"shape: L={args.layers} d={args.d} F={args.ffn}, {args.batches} batches × {args.batch} × {args.seq} = "
          f"{tokens} validation tokens; float32 cache {cache_gib:.2f} GiB in total")
    base = None
    for name, run in runs.items():
        t0 = time.perf_counter()
        progs = abstract_programs(run, args.batches, "cache")
        worst = max(progs.values())
        base = base or worst
        detail = ", ".join(f"{k} {v / GiB:.3f}" for k, v in progs.items())
        print(f"[cache]  {name:26s} peak {worst / GiB:.3f} GiB per device (ratio to 1 device {worst / base:.3f}); "
              f"{detail} GiB  ({time.perf_counter() - t0:.0f} s to compile)")
    for name in ("1 device", "8 devices data=4,tensor=2"):
        stream = {nb: abstract_programs(runs[name], nb, "stream")["search"] for nb in (2, args.batches)}
        print(f"[stream] {name:26s} search peak: {stream[2] / GiB:.3f} GiB with 2 batches, "
              f"{stream[args.batches] / GiB:.3f} GiB with {args.batches} (ratio {stream[args.batches] / stream[2]:.3f})")


def timing(args) -> None:
    """Cache vs stream, 1 device and data=4,tensor=2, small shape, alternating rounds."""
    small = argparse.Namespace(ffn=512, layers=4, d=128, seq=128, batch=16, batches=4)
    rng = np.random.default_rng(0)
    local = [synthetic_batch(rng, small.batch, small.seq, VOCAB) for _ in range(small.batches)]
    setups = {}
    for name, mesh, devices in (("1 device", {"mesh.data": 1}, jax.devices()[:1]),
                                ("data=4,tensor=2", {"mesh.data": 4, "mesh.tensor": 2}, None)):
        run = make_run(small, mesh, devices)
        params = run.init_state(jax.random.key(0))["params"]
        setups[name] = (run, params, [run.device_batch(b) for b in local])
    print(f"\nsmall shape: L={small.layers} d={small.d} F={small.ffn}, {small.batches} batches × {small.batch} × "
          f"{small.seq} tokens; random weights; median of {args.rounds} alternating rounds after a compile round")
    times = {}
    for r in range(args.rounds + 1):
        for name, (run, params, batches) in setups.items():
            for mode in ("cache", "stream"):
                t0 = time.perf_counter()
                cache = dense_pass(run.graphdef, params, batches, mode=mode)
                thr = cache_thresholds(cache, 0.2)
                t1 = time.perf_counter()
                res = PplSearch(run.graphdef, [params], batches, caches=[cache]).search(1.0)
                t2 = time.perf_counter()
                if r:
                    times.setdefault((name, mode), []).append((t1 - t0, t2 - t1, res.evaluations, thr.sparsity.mean()))
    for (name, mode), rows in times.items():
        a, b = np.median([x[0] for x in rows]), np.median([x[1] for x in rows])
        print(f"  {name:16s} {mode:6s}: dense pass + threshold search {a:.2f} s; PPL-1% search {b:.2f} s "
              f"({rows[0][2]} sparse evaluations, sparsity at CETT 0.2 {rows[0][3]:.4f})")
    for name in setups:
        c, s = (np.median([x[1] for x in times[(name, m)]]) for m in ("cache", "stream"))
        print(f"  {name}: PPL-1% search time stream/cache = {s / c:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-time", action="store_true")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].device_kind})")
    memory(args)
    if not args.skip_time:
        timing(args)


if __name__ == "__main__":
    main()

"""Every paper config compiled by the TPU compiler for TPU slices on this CPU machine (libtpu,
no TPU attached): fit, peak HBM per chip, compile seconds, the compiler's estimated step
time, tokens/s and MFU; `--tune` for the 1.3B config; the Pallas decode kernels through
Mosaic. Step times, tokens/s and MFU are compiler estimates, never measurements.

    .venv/bin/python bench/tpu_compile.py                      # → bench/results/tpu_compile.txt
    .venv/bin/python bench/tpu_compile.py --configs relu2/1p3b.py:relu2 --topologies v5p-8 --tune none

Each config runs scanned with full remat, FSDP over the whole slice (mesh data=1,
fsdp=-1), its own global batch and grad_accum (1 unless it sets one).
"""
import argparse
import json
from importlib.metadata import version
import sys
import time

import jax
import jax.numpy as jnp

from sparsity_jax.errors import UserError
from sparsity_jax.infer.kernels import tpu as kernels
from sparsity_jax.methods import make_method
from sparsity_jax import settings
from sparsity_jax.devices import hardware
from sparsity_jax.train import dry_run as dr
from sparsity_jax.train.tune import tune, tune_table

CONFIGS = ["sparsing_law/0p1b.py:relu", "relu2/1p3b.py:relu2", "relu2/1p3b.py:swiglu", "layer_patterns/paper.py",
           "ssd/gpt_base.py:ssd"]
TOPOLOGIES = ["v5litepod-8", "v5p-8", "v4-8"]
MULTI_HOST = [("relu2/1p3b.py:relu2", "v5p-64")]
TUNE = ["relu2/1p3b.py:relu2@v5p-8", "relu2/1p3b.py:relu2@v5litepod-8"]
FIRST = ("relu2/1p3b.py:relu2", "v5p-8")
OVERRIDES = {"model.scan_layers": "True", "model.remat": "full", "mesh.data": "1", "mesh.fsdp": "-1",
             "mesh.tensor": "1"}
# (d, F, block b, rows N): SmolLM2-135M, Llama-7B, wide toys up to b = 128
KERNEL_SHAPES = [(576, 1536, 8, 1), (576, 1536, 32, 1), (4096, 11008, 16, 16), (4096, 11008, 16, 1),
                 (1024, 8192, 64, 4), (1024, 8192, 128, 8)]


def out(line: str, file) -> None:
    print(line, flush=True)
    file.write(line + "\n")
    file.flush()


def row(config: str, topology: str, st, r: dr.DryRun | None, error: str | None = None) -> str:
    if r is None:
        return f"| {config} | {topology} | - | - | - | - | - | - | - | {error} |"
    est = r.estimated_step_seconds
    mark = "" if r.compiler_step_seconds else " ʳ"
    fits = "NO (refused)" if r.compiler_error else {True: "yes", False: "NO", None: "?"}[r.fits]
    return (f"| {config} | {topology} ({r.devices} × {r.device_kind}, {r.hosts} host{'s' * (r.hosts > 1)}) | {fits} | "
            f"{r.peak_bytes_per_device / dr.GIB:.2f} | {r.compile_seconds:.0f} | "
            f"{f'{est:.4g}{mark}' if est else 'n/a'} | {f'{r.estimated_tokens_per_second:,.0f}' if est else 'n/a'} | "
            f"{f'{r.estimated_mfu:.1%}' if r.estimated_mfu else 'n/a'} | {st.train.grad_accum} | {r.per_device_batch} |")


def dry(config: str, topology: str, file) -> None:
    st = settings.load(f"configs/{config}", OVERRIDES)
    t0 = time.perf_counter()
    try:
        r = dr.dry_run(st, make_method, topology=topology)
    except UserError as e:
        out(row(config, topology, st, None, str(e)), file)
        return
    out(row(config, topology, st, r), file)
    out(f"<!-- {config} {topology} wall {time.perf_counter() - t0:.0f} s: {json.dumps(r.to_json())} -->", file)


def kernels_check(file) -> None:
    out("## Pallas TPU decode kernels through Mosaic\n", file)
    out("| chip | dtype | d | F | b | N | products | Mosaic custom call | compile s |", file)
    out("|---|---|---|---|---|---|---|---|---|", file)
    swiglu = lambda h, g: jax.nn.silu(g) * h  # noqa: E731
    up = jax.jit(lambda x, w, u, i: kernels.block_up(x, w, i, gate_GxBxD=u, act=swiglu))
    down = jax.jit(lambda a, w, i: kernels.block_down(a, w, i))
    for chip in ("v5litepod-1", "v5p-8"):
        one = jax.sharding.SingleDeviceSharding(hardware.topology_devices(chip)[0])
        for dtype in (jnp.bfloat16, jnp.float32):
            sds = lambda s, dt=dtype: jax.ShapeDtypeStruct(s, dt, sharding=one)  # noqa: E731
            for d, F, b, n in KERNEL_SHAPES:
                G, K = F // b, max(1, F // b // 4)
                t0 = time.perf_counter()
                cu = up.lower(sds((n, d)), sds((G, b, d)), sds((G, b, d)), sds((K,), jnp.int32)).compile()
                cd = down.lower(sds((n, K * b)), sds((G, b, d)), sds((K,), jnp.int32)).compile()
                sec = time.perf_counter() - t0
                mosaic = all("tpu_custom_call" in c.as_text() for c in (cu, cd))
                out(f"| {chip} | {jnp.dtype(dtype).name} | {d} | {F} | {b} | {n} | gated up + down, K = {K} blocks | "
                    f"{'yes' if mosaic else 'NO'} | {sec:.2f} |", file)


def table_header(title: str, file) -> None:
    out(f"\n## {title}\n", file)
    out("| config | slice | fits | peak GiB/chip | compile s | step s | tokens/s | MFU | grad_accum | batch/chip |", file)
    out("|---|---|---|---|---|---|---|---|---|---|", file)


def tune_pairs(arg: str) -> list[tuple[str, str]]:
    return [] if arg == "none" else [tuple(x.split("@")) for x in arg.split(",")]


def tuned(config: str, topology: str, file) -> None:
    st = settings.load(f"configs/{config}", OVERRIDES)
    t0 = time.perf_counter()
    tried, chosen = tune(st, make_method, topology=topology)
    out(f"\n## train --dry-run --tune: {config} on {topology} ({time.perf_counter() - t0:.0f} s)\n", file)
    out("```", file)
    out(tune_table(tried, chosen), file)
    if chosen is not None:
        c = tried[chosen][0]
        out(f"chosen: --config.model.remat={c.model.remat} --config.train.grad_accum={c.train.grad_accum}", file)
    out("```\n", file)


def main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--tune", default=",".join(TUNE), help="CONFIG@TOPOLOGY,... or none")
    p.add_argument("--multi-host", default=",".join(f"{c}@{t}" for c, t in MULTI_HOST), help="CONFIG@TOPOLOGY,... or none")
    p.add_argument("--out", default="bench/results/tpu_compile.txt")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    with open(args.out, "w") as file:
        out(f"# TPU compile (jax {jax.__version__}, libtpu {version('libtpu')}; compiled on this 2-core CPU machine, "
            "no TPU attached)\n", file)
        out("Overrides for every config: " + " ".join(f"--config.{k}={v}" for k, v in OVERRIDES.items()), file)
        out("Step s, tokens/s, MFU: compiler estimates (the TPU compiler's optimal_seconds, scan- and "
            "accumulation-corrected; ʳ where it gives none: the roofline of its own FLOPs and bytes per chip), "
            "not measurements.\n", file)
        kernels_check(file)
        names = lambda s: [] if s == "none" else s.split(",")  # noqa: E731
        pairs = [(c, t) for c in names(args.configs) for t in names(args.topologies)]
        if FIRST in pairs:  # the README's command and the tuning first: a partial run still has them
            table_header("the ReLU² 1.3B config as written (`train --dry-run --topology v5p-8`)", file)
            dry(*FIRST, file)
        for config, topology in tune_pairs(args.tune):
            tuned(config, topology, file)
        table_header("every paper config", file)
        for config, topology in [p for p in pairs if p != FIRST] + tune_pairs(args.multi_host):
            dry(config, topology, file)
        out(f"\ntotal wall {time.perf_counter() - t_start:.0f} s", file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

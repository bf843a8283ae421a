"""Bench: import time and host memory of `sparsity_jax.hf.load_pretrained` on a ~1B Llama.

    nice python bench/hf_import.py [--shape tinyllama|small] [--dir DIR]

Writes a random Llama of TinyLlama-1.1B's shape (d 2048, 22 layers, F 5632, 32 heads /
4 KV heads, vocab 32000; 1.1e9 parameters, 2.2 GB in bf16) as two safetensors shards with
an index into a temporary directory, then loads it in a fresh process (bf16 stays bf16,
one device) while a thread samples /proc/self/status every 2 ms. Printed: load time,
checkpoint bytes, and the peak host memory above the process baseline (taken after
JAX started) as a fraction of the checkpoint size: total RSS, anonymous RSS (file-backed
pages of the memory-mapped shards are page cache the kernel may drop) and, since on a
CPU backend the loaded parameters themselves live in host memory, the anonymous peak
less the loaded parameters' bytes: the loader's own staging memory (target ≤ 0.25).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPES = {
    "tinyllama": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4),
    "small": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4),
}


def write_checkpoint(out: Path, shape: dict) -> int:
    """A random bf16 Llama as two shards + index; returns the tensor bytes."""
    import ml_dtypes
    from safetensors.numpy import save_file

    d, f, L, h, g, v = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size"))
    k = d // h
    names = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(L):
        p = f"model.layers.{i}."
        names.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                      p + "self_attn.q_proj.weight": (h * k, d), p + "self_attn.k_proj.weight": (g * k, d),
                      p + "self_attn.v_proj.weight": (g * k, d), p + "self_attn.o_proj.weight": (d, h * k),
                      p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                      p + "mlp.down_proj.weight": (d, f)})
    rng = np.random.default_rng(0)
    items = list(names.items())
    half = len(items) // 2
    weight_map, total = {}, 0
    for j, part in enumerate((items[:half], items[half:])):
        file = f"model-0000{j + 1}-of-00002.safetensors"
        tensors = {n: (rng.standard_normal(s, np.float32) * 0.02).astype(ml_dtypes.bfloat16) for n, s in part}
        total += sum(t.nbytes for t in tensors.values())
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in tensors})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(dict(shape, model_type="llama", hidden_act="silu",
                                                     rms_norm_eps=1e-5, rope_theta=10000.0,
                                                     tie_word_embeddings=False, torch_dtype="bfloat16")))
    return total


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                name, value = line.split(":")
                out[name] = int(value.split()[0]) * 1024
    return out


def child(path: str) -> None:
    """Runs in a fresh process: baseline, load, peak."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.ones(4) + 1)  # JAX started before the baseline
    from sparsity_jax.hf import load_pretrained

    base, peak, done = status(), status(), threading.Event()

    def sample():
        while not done.is_set():
            now = status()
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    model, cfg = load_pretrained(path)
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    params = sum(x.nbytes for x in leaves)
    print(json.dumps({"seconds": seconds, "param_bytes": params, "param_dtype": cfg.param_dtype,
                      "base": base, "peak": peak, "devices": len(jax.devices()),
                      "platform": jax.devices()[0].platform}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=tuple(SHAPES), default="tinyllama")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary directory)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        size = write_checkpoint(Path(tmp), SHAPES[args.shape])
        print(f"shape {args.shape}: {SHAPES[args.shape]}")
        print(f"wrote {size / 1e9:.3f} GB of bf16 tensors as 2 shards in {time.perf_counter() - t0:.1f} s")
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        env.pop("XLA_FLAGS", None)  # one device
        res = subprocess.run([sys.executable, __file__, "--child", tmp], env=env, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-3000:])
            return res.returncode
        r = json.loads(res.stdout.strip().splitlines()[-1])
    above = {k: r["peak"][k] - r["base"][k] for k in r["peak"]}
    print(f"load_pretrained: {r['seconds']:.1f} s on {r['devices']} {r['platform']} device(s); params "
          f"{r['param_bytes'] / 1e9:.3f} GB {r['param_dtype']}")
    for key in ("VmRSS", "RssAnon", "RssFile"):
        print(f"peak {key} above baseline: {above[key] / 1e9:.3f} GB = {above[key] / size:.3f} × checkpoint")
    staging = above["RssAnon"] - r["param_bytes"]
    print(f"staging (peak RssAnon above baseline − loaded params, which a CPU backend keeps in host memory): "
          f"{staging / 1e9:.3f} GB = {staging / size:.3f} × checkpoint (target ≤ 0.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

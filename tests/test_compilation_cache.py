"""The CLI's persistent compilation cache: the first command writes it in the per-user
directory, the next one (pointed at it by JAX_COMPILATION_CACHE_DIR, which it respects)
compiles nothing again; importing the library leaves JAX's cache settings alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LLAMA = Path(__file__).resolve().parent / "fixtures" / "hf" / "llama_gqa_llama3"
HIT = "Persistent compilation cache hit"


def env(**extra) -> dict:
    """The test's environment without the suite's own cache settings (conftest), plus `extra`."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    return {**out, "JAX_LOG_COMPILES": "1", **extra}


def cli(*argv, **extra) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sparsity_jax.cli", *map(str, argv)], env=env(**extra),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_second_command_reads_what_the_first_compiled(tmp_path):
    user = tmp_path / "user"
    first = cli("import", "--hf", LLAMA, "--workdir", tmp_path / "a", SPARSITY_JAX_CACHE=user)
    entries = sorted(p.name for p in (user / "xla").iterdir())
    assert entries and HIT not in first.stderr
    second = cli("import", "--hf", LLAMA, "--workdir", tmp_path / "b", SPARSITY_JAX_CACHE=tmp_path / "elsewhere",
                 JAX_COMPILATION_CACHE_DIR=user / "xla")
    assert second.stderr.count(HIT) >= len(entries), second.stderr[-3000:]
    assert sorted(p.name for p in (user / "xla").iterdir()) == entries  # nothing compiled anew
    assert not (tmp_path / "elsewhere").exists()


def test_importing_the_library_leaves_the_cache_alone():
    code = "import jax, sparsity_jax.cli, sparsity_jax.commands; print(jax.config.jax_compilation_cache_dir)"
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr[-2000:]

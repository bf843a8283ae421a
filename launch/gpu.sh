#!/usr/bin/env bash
# Train on one GPU machine: install the CUDA build of JAX into .venv and run.
#
#   launch/gpu.sh train --config configs/default.py --workdir workdirs/gpu --config.model.dtype=bfloat16
#
# Env: CUDA_PLUGIN (default jax[cuda12]); XLA_PYTHON_CLIENT_MEM_FRACTION to cap memory.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
if [[ ! -x .venv/bin/sparsity-jax ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e . "${CUDA_PLUGIN:-jax[cuda12]}"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/sparsity-jax "$@"

#!/usr/bin/env bash
# Runs `sparsity-jax` as N processes on this machine over loopback, each process with
# TOTAL_DEVICES/N fake CPU devices: a real multi-host run (jax.distributed, per-process
# data, one global mesh) without a cluster.
#
#   launch/local_multiprocess.sh N [sparsity-jax args...]
#   e.g. launch/local_multiprocess.sh 2 train --workdir /tmp/run --config.train.steps=20
#
# Env: TOTAL_DEVICES (default 8), XLA_FLAGS (kept, but for the device count), PORT
# (default: a free one), SPARSITY_JAX (the command; default: sparsity-jax from .venv or
# PATH). Process 0's output goes to stdout, the others' to WORKDIR-less logs under
# ${LOG_DIR:-/tmp}/sparsity_jax_proc_<i>.log.
set -euo pipefail
N=${1:?usage: local_multiprocess.sh NUM_PROCESSES [sparsity-jax args...]}
shift
TOTAL_DEVICES=${TOTAL_DEVICES:-8}
if (( TOTAL_DEVICES % N )); then
  echo "local_multiprocess.sh: $N processes must divide TOTAL_DEVICES=$TOTAL_DEVICES" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${SPARSITY_JAX:-}" ]]; then
  if [[ -x "$HERE/.venv/bin/sparsity-jax" ]]; then SPARSITY_JAX="$HERE/.venv/bin/sparsity-jax"; else SPARSITY_JAX=sparsity-jax; fi
fi
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-/tmp}
export JAX_PLATFORMS=cpu
# the caller's XLA flags stay (e.g. the test suite's compile options), but for the device count
OTHER_FLAGS=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<< "${XLA_FLAGS:-}")
export XLA_FLAGS="${OTHER_FLAGS} --xla_force_host_platform_device_count=$((TOTAL_DEVICES / N))"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 1; i < N; i++)); do
  $SPARSITY_JAX "$@" --coordinator "127.0.0.1:$PORT" --num-processes "$N" --process-id "$i" \
    > "$LOG_DIR/sparsity_jax_proc_$i.log" 2>&1 &
  pids+=($!)
done
status=0
$SPARSITY_JAX "$@" --coordinator "127.0.0.1:$PORT" --num-processes "$N" --process-id 0 || status=$?
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status

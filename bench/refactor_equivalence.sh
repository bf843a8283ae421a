#!/usr/bin/env bash
# Short runs whose metrics.jsonl / eval.json / cett.json / ppl.json numbers must not change
# across a refactor (issue 19, acceptance 1). Usage: bench/refactor_equivalence.sh OUTDIR
# Prints one JSON digest of every number (keys renamed by the refactor are mapped by
# bench/equivalence_digest.py) so two digests can be diffed.
set -euo pipefail
OUT=${1:?usage: bench/refactor_equivalence.sh OUTDIR}
SJ=${SJ:-.venv/bin/sparsity-jax}
export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8
SHORT="--config.train.steps=30 --config.train.checkpoint_every=15 --config.train.eval_every=15
  --config.train.log_every=10 --config.train.metrics_every=10 --config.train.eval_batches=2 --config.data.max_files=200"
mkdir -p "$OUT"
[ -e "$OUT/dense/cett.json" ] || { $SJ train --config configs/default.py --workdir "$OUT/dense" $SHORT
  $SJ evaluate --workdir "$OUT/dense" --ppl-p 1
  $SJ cett --workdir "$OUT/dense" --cett 0.2; }
$SJ train --config configs/ssd/tiny.py:pld --workdir "$OUT/pld" $SHORT --config.train.metrics_every=0 --config.train.global_batch_size=16 \
  --config.train.seq_len=64
$SJ train --config configs/layer_patterns/masking.py:dead --workdir "$OUT/mask" $SHORT \
  --config.unit_mask.at_step=10 --config.train.global_batch_size=16 --config.train.seq_len=64
$SJ train --config configs/ssd/tiny.py:ssd --workdir "$OUT/ssd" $SHORT --config.train.metrics_every=0 --config.train.global_batch_size=16 \
  --config.train.seq_len=64 --config.method.monitor_every=5 --config.method.ari_threshold=0.5
$SJ ssd --workdir "$OUT/ssd"

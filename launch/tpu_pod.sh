#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create the TPU VM (or a queued resource), copy this
# repository to every worker, install it, run `sparsity-jax` on all workers at once,
# and (optionally) tear the slice down.
#
#   launch/tpu_pod.sh create   # create the slice (queued resource when QUEUED=1)
#   launch/tpu_pod.sh setup    # copy the repo + pip install (the jax and libtpu of constraints.txt) on every worker
#   launch/tpu_pod.sh run train --config configs/sparsing_law/0p1b.py:relu --workdir gs://BUCKET/runs/sl
#   launch/tpu_pod.sh delete   # tear down
#
# Env: TPU_NAME, ZONE, ACCELERATOR (e.g. v5litepod-64), RUNTIME (e.g. v2-alpha-tpuv5-lite),
# PROJECT (optional), QUEUED=1 to go through a queued resource, SPOT=1 for spot capacity.
# Each worker runs with `--distributed`: jax.distributed.initialize() discovers the slice,
# every host reads its own data shards, only process 0 writes logs; checkpoints go to the
# workdir (use a gs:// path so every host sees it). Preemption sends SIGTERM, on which the
# trainer saves and exits; re-running `run` resumes from the latest checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=${REMOTE_DIR:-sparsity_jax}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG --worker=all --command "$1"; }

case "${1:-}" in
  create)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources create "$TPU_NAME-qr" --node-id "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG \
        --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" ${SPOT:+--spot}
      echo "queued; watch: gcloud compute tpus queued-resources describe $TPU_NAME-qr --zone $ZONE"
    else
      gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG \
        --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ${SPOT:+--spot}
    fi ;;
  setup)
    tar czf /tmp/sparsity_jax_src.tgz -C "$HERE" --exclude .venv --exclude workdirs --exclude .git .
    gcloud compute tpus tpu-vm scp /tmp/sparsity_jax_src.tgz "$TPU_NAME:/tmp/" --zone "$ZONE" $PROJECT_FLAG --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar xzf /tmp/sparsity_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && \
      python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -c constraints.txt -e '.[gcs,tpu]'" ;;
  run)
    shift
    args=$(printf '%q ' "$@")
    ssh_all "cd $REMOTE_DIR && .venv/bin/sparsity-jax $args --distributed" ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources delete "$TPU_NAME-qr" --zone "$ZONE" $PROJECT_FLAG --force --quiet
    else
      gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG --quiet
    fi ;;
  *) echo "usage: $0 create|setup|run ARGS...|delete" >&2; exit 2 ;;
esac

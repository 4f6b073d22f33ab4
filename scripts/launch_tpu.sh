#!/usr/bin/env bash
# Start one training process per host of a TPU pod slice (JAX's multi-controller runtime).
#
#   scripts/launch_tpu.sh TPU_NAME ZONE [scripts/train.py flags...]
#   scripts/launch_tpu.sh my-v5p-64 us-east5-a --config=configs/pretrain.py:model=1b \
#       --config.workdir=gs://bucket/runs/1b --config.mesh.fsdp=-1
#
# Every worker runs the same command; jax.distributed.initialize() finds the pod's other
# hosts by itself (llm.sharding.maybe_initialize_distributed), so no addresses are passed.
# The workdir must be storage every host sees (a gs:// bucket), since orbax writes each
# host's checkpoint shards there.
#
# Environment: REPO_DIR (checkout on the workers, default ~/llm), PROJECT (gcloud project),
# SETUP (a command run first on every worker, e.g. 'pip install -e .[tpu]'),
# DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [scripts/train.py flags...]" >&2
  exit 2
fi
tpu_name=$1 zone=$2
shift 2
repo_dir=${REPO_DIR:-'~/llm'}

train_cmd="cd $repo_dir && python scripts/train.py"
for arg in "$@"; do
  train_cmd+=" $(printf '%q' "$arg")"
done
if [[ -n ${SETUP:-} ]]; then
  train_cmd="cd $repo_dir && $SETUP && $train_cmd"
fi

cmd=(gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all
     --command="$train_cmd")
if [[ -n ${PROJECT:-} ]]; then
  cmd+=(--project="$PROJECT")
fi

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi

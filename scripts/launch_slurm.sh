#!/usr/bin/env bash
# Multi-node training under SLURM: one process per node, all of a node's GPUs each.
#
#   sbatch --nodes=4 scripts/launch_slurm.sh --config=configs/pretrain.py:model=1b \
#       --config.workdir=/shared/runs/1b --config.mesh.fsdp=-1
#
# srun starts scripts/train.py once per node; jax.distributed.initialize() reads the
# coordinator and process ids from SLURM's variables (llm.sharding.
# maybe_initialize_distributed), so every process joins one global mesh. The workdir
# must be a filesystem every node sees. Override any #SBATCH default on the sbatch
# command line. DRY_RUN=1 prints the srun command instead of running it.
#SBATCH --job-name=llm-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: sbatch [--nodes=N] $0 [scripts/train.py flags...]" >&2
  exit 2
fi
# Under sbatch the script runs from a spool copy, so find the checkout from the submit dir.
repo_dir=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1
     python "$repo_dir/scripts/train.py" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  cd "$repo_dir"
  exec "${cmd[@]}"
fi

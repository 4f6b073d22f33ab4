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
#
# Sweeps (scripts/sweep.py, executor=slurm) submit this script as an array job:
#   sbatch --array=0-N scripts/launch_slurm.sh --sweep_runs=FOLDER/slurm/runs-....txt
# Line i of that file (shell-quoted: the run's workdir, then its train.py flags) is array
# task i's run. Its output is appended to WORKDIR/train.log and one line with the exit code
# and wall time to WORKDIR/attempts.jsonl, which the sweep's results table reads.
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
workdir=""
if [[ $1 == --sweep_runs=* ]]; then
  runs_file=${1#--sweep_runs=}
  index=${SLURM_ARRAY_TASK_ID:?--sweep_runs needs an array job (sbatch --array=...)}
  line=$(sed -n "$((index + 1))p" "$runs_file")
  if [[ -z $line ]]; then
    echo "error: $runs_file has no line for array task $index" >&2
    exit 2
  fi
  eval "run=($line)"  # written by scripts/sweep.py with shlex.join
  workdir=${run[0]}
  set -- "${run[@]:1}"
fi
cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1
     python "$repo_dir/scripts/train.py" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
elif [[ -n $workdir ]]; then
  cd "$repo_dir"
  mkdir -p "$workdir"
  started=$(date +%s)
  echo "=== sweep attempt $(date +%Y-%m-%dT%H:%M:%S) (slurm $SLURM_ARRAY_JOB_ID/$index) ===" \
    >>"$workdir/train.log"
  set +e
  "${cmd[@]}" >>"$workdir/train.log" 2>&1
  code=$?
  set -e
  printf '{"exit_code": %d, "wall_s": %d, "executor": "slurm", "started": %d}\n' \
    "$code" "$(($(date +%s) - started))" "$started" >>"$workdir/attempts.jsonl"
  exit "$code"
else
  cd "$repo_dir"
  exec "${cmd[@]}"
fi

#!/usr/bin/env bash
# Train avflow on a SLURM GPU cluster: one task per node, each driving all of its node's GPUs, joined into one
# JAX job through per-task environment variables (JAX_COORDINATOR_ADDRESS = first node, JAX_NUM_PROCESSES =
# SLURM_NTASKS, JAX_PROCESS_ID = SLURM_PROCID; read by `avflow/train/distributed.py`).
#
#   launch/slurm_gpu.sh --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \
#     --venv=/path/to/venv --workdir=/shared/runs/paper --config=configs/visah_fm.py:paper \
#     [--account=A] [--port=12355] [--dry-run] [-- --config.batch_size=64 --config.mesh.fsdp=8 ...]
#
# The venv needs the main job's set and a CUDA build of JAX (`pip install -r requirements.txt -e .
# "jax[cuda12]==0.10.2"`, no PyTorch); --workdir and the records must be on a file system every node sees. The run
# always passes --resume, so a requeued or resubmitted job continues from the last checkpoint. --dry-run prints the
# sbatch command and its batch script.
set -euo pipefail

nodes=1 gpus_per_node=8 partition="" account="" time_limit="24:00:00" port=12355 job_name="avflow"
venv="" workdir="" config="configs/visah_fm.py:paper" dry_run=0
overrides=()

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus_per_node="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --job_name=*) job_name="${1#*=}" ;;
    --venv=*) venv="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) echo "slurm_gpu.sh: unknown argument '$1' (overrides go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$venv" && -n "$workdir" ]] || { echo "slurm_gpu.sh: --venv and --workdir are required" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"

# Shell quoting that leaves plain words alone: q "a b" → 'a b'.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

sbatch_args=(sbatch --job-name="$job_name" --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus_per_node"
             --time="$time_limit" --requeue --output="$workdir/slurm-%j.out")
[[ -n "$partition" ]] && sbatch_args+=(--partition="$partition")
[[ -n "$account" ]] && sbatch_args+=(--account="$account")

train="$(q "$venv/bin/python") -m avflow train --config=$(q "$config") --workdir=$(q "$workdir") --resume"
for o in "${overrides[@]}"; do train+=" $(q "$o")"; done

script="#!/bin/bash
set -euo pipefail
cd $(q "$root")
export JAX_COORDINATOR_ADDRESS=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1):$port\"
export JAX_NUM_PROCESSES=\"\$SLURM_NNODES\"
srun --ntasks=$nodes --ntasks-per-node=1 --kill-on-bad-exit=1 \\
  bash -c 'JAX_PROCESS_ID=\$SLURM_PROCID exec \"\$0\" \"\$@\"' $train"

line=""
for a in "${sbatch_args[@]}"; do line+="${line:+ }$(q "$a")"; done
if ((dry_run)); then
  printf '%s <<'"'"'EOF'"'"'\n%s\nEOF\n' "$line" "$script"
else
  mkdir -p "$workdir"
  printf '%s\n' "$script" | "${sbatch_args[@]}"
fi

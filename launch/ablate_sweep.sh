#!/usr/bin/env bash
# Launch every row × seed of a paper table at paper scale on a cluster: one training job per row and seed through
# launch/slurm_gpu.sh (one sbatch job each) or launch/tpu_pod.sh (one run after another on the pod).
#
#   launch/ablate_sweep.sh --table=3 --seeds=0,1,2 --runs=/shared/runs/ablate --launcher=slurm_gpu.sh \
#     [--python=python3] [--dry-run] [launcher arguments, e.g. --nodes=2 --venv=/path/to/venv] \
#     [-- --config.a.b=v ...]
#
# The rows and their work directories are those of `python -m avflow ablate --table=N --scale=paper`
# (<runs>/table<N>_paper/<variant>/seed<S>); arguments this script does not know go to the launcher, overrides
# after -- go to every run. --dry-run is passed on, so every launcher prints what it would run.
set -euo pipefail

table="" seeds="0" runs="" launcher="" python="python3" dry_run=()
launcher_args=() overrides=()

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --table=*) table="${1#*=}" ;;
    --seeds=*) seeds="${1#*=}" ;;
    --runs=*) runs="${1#*=}" ;;
    --launcher=*) launcher="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) dry_run=(--dry-run) ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) launcher_args+=("$1") ;;
  esac
  shift
done
[[ -n "$table" && -n "$runs" ]] || { echo "ablate_sweep.sh: --table and --runs are required" >&2; exit 2; }
case "$launcher" in
  slurm_gpu.sh|tpu_pod.sh) ;;
  *) echo "ablate_sweep.sh: --launcher must be slurm_gpu.sh or tpu_pod.sh, got '$launcher'" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"

# One `python -m avflow train --config=C --config.seed=S --workdir=W` line per row and seed (shell-quoted).
commands="$(cd "$root" && "$python" -m avflow ablate --table="$table" --scale=paper --seeds="$seeds" --runs="$runs")"
while IFS= read -r line; do
  [[ "$line" == "python -m avflow train "* ]] || continue
  eval "words=($line)"
  config="${words[4]#--config=}" seed="${words[5]#--config.seed=}" workdir="${words[6]#--workdir=}"
  echo "# $config seed $seed → $workdir" >&2
  bash "$root/launch/$launcher" "${launcher_args[@]}" --config="$config" --workdir="$workdir" "${dry_run[@]}" \
    -- --config.seed="$seed" "${overrides[@]}"
done <<< "$commands"

#!/usr/bin/env bash
# Train avflow on a Cloud TPU VM or pod slice: create the TPU (optional), install the repository on every worker,
# then run `python -m avflow train` on all workers at once and stream their logs here.
#
#   launch/tpu_pod.sh --name=avflow-v5p --zone=us-east5-a --accelerator=v5p-32 --create \
#     --bucket=my-avflow-bucket --workdir=/mnt/avflow/runs/paper --config=configs/visah_fm.py:paper \
#     [--repo=URL] [--ref=COMMIT] [--dry-run] [-- --config.batch_size=64 --config.mesh.fsdp=4 ...]
#
# Every worker joins one JAX job (AVFLOW_DISTRIBUTED=auto: `jax.distributed.initialize()` finds the pod's workers).
# Workers clone --repo (default: this checkout's origin) at --ref (default: this checkout's commit). --workdir and
# the records must be visible to every worker: --bucket mounts gs://BUCKET at /mnt/avflow with gcsfuse. The run
# always passes --resume, so running the script again after a preemption continues from the last checkpoint.
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

name="" zone="" project="" accelerator="v5p-8" version="v2-alpha-tpuv5" create=0 dry_run=0
repo="" ref="" bucket="" workdir="" config="configs/visah_fm.py:paper"
overrides=()

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --create) create=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (overrides go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$name" && -n "$zone" && -n "$workdir" ]] || { echo "tpu_pod.sh: --name, --zone and --workdir are required" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ -n "$repo" ]] || repo="$(git -C "$root" remote get-url origin 2>/dev/null)" || { echo "tpu_pod.sh: no git remote 'origin': pass --repo=URL" >&2; exit 2; }
[[ -n "$ref" ]] || ref="$(git -C "$root" rev-parse HEAD)"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# Shell quoting that leaves plain words alone: q "a b" → 'a b'.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

run() {
  if ((dry_run)); then
    local line="" a
    for a in "$@"; do line+="${line:+ }$(q "$a")"; done
    echo "$line"
  else
    "$@"
  fi
}

# On each worker: fetch the repository at --ref, install the main job's set (requirements.txt, no PyTorch) with
# the TPU build of JAX, mount the bucket.
install="set -e; if [ -d avflow ]; then git -C avflow fetch -q origin $(q "$ref") && git -C avflow checkout -q FETCH_HEAD;"
install+=" else git clone -q $(q "$repo") avflow && git -C avflow checkout -q $(q "$ref"); fi;"
install+=" python3 -m venv ~/venv && ~/venv/bin/pip install -q -r avflow/requirements.txt -e avflow \"jax[tpu]==0.10.2\""
if [[ -n "$bucket" ]]; then
  install+="; sudo mkdir -p /mnt/avflow && sudo chown \$USER /mnt/avflow"
  install+="; mountpoint -q /mnt/avflow || gcsfuse --implicit-dirs $(q "$bucket") /mnt/avflow"
fi

# On each worker: the same training command; process 0 writes metrics, all write their checkpoint shards.
train="set -o pipefail; cd avflow && AVFLOW_DISTRIBUTED=auto ~/venv/bin/python -m avflow train"
train+=" --config=$(q "$config") --workdir=$(q "$workdir") --resume"
for o in "${overrides[@]}"; do train+=" $(q "$o")"; done
train+=" 2>&1 | tee -a ~/avflow-train.log"

if ((create)); then
  run "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$version"
fi
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$train"

#!/usr/bin/env bash
# The accelerator figures of docs/performance.md in one run, each part under its own time limit, on the device JAX
# sees (a GPU, a TPU host, or the CPU to try it out): one JSON line per part in OUT/results.jsonl, a timeout or a
# failure recorded as such and the next part run regardless; each part's log in OUT/<part>.log.
#
#   launch/accelerator_bench.sh --out=DIR [--config=configs/visah_fm.py:paper_fm] [--batch_size=4]
#     [--infer_batch_size=32] [--peak_flops=989e12] [--limit=240] [--only=step,cache,...] [--python=python]
#     [--dry-run] [-- --config.a=b ...]
#
# Parts, in this order (the first ones matter most when device time is short):
#   step       the FM train step compiled from an empty compilation cache (OUT/cache): compile_s, hlo_lines, step_s, MFU
#   cache      the same command again: the compile from the persistent cache
#   torch      the PyTorch mirror beside avflow (FM step, FM + rollout step, 4-step highlight), bf16 autocast against
#              avflow's bf16 steps
#   torch_fp32 the same in float32 (TF32 on the PyTorch side, as its users run it)
#   infer      the 4-step highlight with --infer_batch_size windows per call: seconds per hour of audio
#   rollout    the FM + rollout step (remat per step) against the FM step: time and memory ratios
# Every part runs the backbone on stored CLIP features (--config.model.conditioning.kind=features); overrides after
# -- are added to every part.
set -euo pipefail

out="" config="configs/visah_fm.py:paper_fm" batch=4 infer_batch=32 peak=0 limit=240 python="python" dry_run=0
only="step,cache,torch,torch_fp32,infer,rollout"
overrides=()

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --out=*) out="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --batch_size=*) batch="${1#*=}" ;;
    --infer_batch_size=*) infer_batch="${1#*=}" ;;
    --peak_flops=*) peak="${1#*=}" ;;
    --limit=*) limit="${1#*=}" ;;
    --only=*) only="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) echo "accelerator_bench.sh: unknown argument '$1' (overrides go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$out" ]] || { echo "accelerator_bench.sh: --out=DIR is required" >&2; exit 2; }
known=" step cache torch torch_fp32 infer rollout "
IFS=, read -r -a parts <<< "$only"
for part in "${parts[@]}"; do
  [[ "$known" == *" $part "* ]] || { echo "accelerator_bench.sh: unknown part '$part' in --only (known:$known)" >&2; exit 2; }
done
root="$(cd "$(dirname "$0")/.." && pwd)"

# The bench arguments of part $1 (python -m avflow bench ...), into the array `args`.
part_args() {
  local common=(--config="$config" --config.model.conditioning.kind=features ${overrides[@]+"${overrides[@]}"})
  case "$1" in
    step|cache) args=(--what=step --batch_size="$batch" --repeats=5 --peak_flops="$peak" "${common[@]}") ;;
    torch) args=(--what=torch --batch_size="$batch" --repeats=3 --torch_bf16 "${common[@]}" --config.precision=bf16) ;;
    torch_fp32) args=(--what=torch --batch_size="$batch" --repeats=3 "${common[@]}") ;;
    infer) args=(--what=infer --batch_size="$infer_batch" --repeats=3 "${common[@]}") ;;
    rollout) args=(--what=rollout --batch_size="$batch" --remat_policies=step --repeats=2 --peak_flops="$peak"
                   "${common[@]}") ;;
  esac
}

if ((dry_run)); then
  for part in "${parts[@]}"; do
    part_args "$part"
    printf '%s: AVFLOW_COMPILATION_CACHE=%q timeout %s %q -m avflow bench' "$part" "$out/cache" "$limit" "$python"
    printf ' %q' "${args[@]}"
    printf '\n'
  done
  exit 0
fi

mkdir -p "$out"
rm -rf "$out/cache"  # the step part compiles from an empty cache; the cache part finds what it wrote
cd "$root"
for part in "${parts[@]}"; do
  part_args "$part"
  start=$SECONDS
  set +e
  AVFLOW_COMPILATION_CACHE="$out/cache" timeout --signal=INT --kill-after=20 "$limit" \
    "$python" -m avflow bench "${args[@]}" > "$out/$part.json.txt" 2> "$out/$part.log"
  rc=$?
  set -e
  wall=$((SECONDS - start))
  result=$(tail -n 1 "$out/$part.json.txt")
  if ((rc == 0)) && [[ "$result" == "{"* ]]; then
    status="ok"
  elif ((rc == 124 || rc == 130 || rc == 137)); then
    status="timeout after ${limit} s" result="null"
  else
    status="failed (exit $rc; see $part.log)" result="null"
  fi
  printf '{"part": "%s", "status": "%s", "wall_s": %d, "result": %s}\n' "$part" "$status" "$wall" "$result" \
    | tee -a "$out/results.jsonl"
done

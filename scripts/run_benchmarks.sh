#!/usr/bin/env bash
# Regenerate the measured tables in docs/benchmarks.md (CPU here; pass --device cuda on a GPU).
#   scripts/run_benchmarks.sh [extra bac bench args, e.g. --device cuda]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BAC=$ROOT/.venv/bin/bac
OUT=$ROOT/build/bench
mkdir -p "$OUT"
"$BAC" bench --random-policy lowdim --n-layer 8 --n-emb 256 --repeats 5 \
  --markdown "$OUT/paper_size_lowdim.md" "$@" > /dev/null
"$BAC" bench --random-policy image --n-layer 8 --n-emb 256 --repeats 5 \
  --markdown "$OUT/paper_size_image.md" "$@" > /dev/null
# Bundled policy: its bundled schedule timed beside the calibrated methods at S=30 and S=10,
# action error on the held-out observations (data/pusht/heldout_lowdim.npz).
for S in 30 10; do
  "$BAC" bench --budget "$S" --ddim-steps 0 --repeats 10 \
    --markdown "$OUT/bundled_lowdim_S$S.md" --json "$@" > "$OUT/bundled_lowdim_S$S.json"
done
# The default camera policy and its bundled Uniform S=30 schedule (held-out observations from
# the bundled bag).
"$BAC" bench "$ROOT/data/policies/pusht_image.safetensors" --budget 30 --ddim-steps 0 \
  --repeats 20 --markdown "$OUT/bundled_image_S30.md" --json "$@" > "$OUT/bundled_image_S30.json"
# Compiled execution (one inductor graph per compute mask) and bfloat16, same policy.
"$BAC" bench "$ROOT/data/policies/pusht_image.safetensors" --budget 30 --ddim-steps 0 \
  --repeats 15 --compile --markdown "$OUT/bundled_image_S30_compiled.md" --json "$@" \
  > "$OUT/bundled_image_S30_compiled.json"
for N in 1 2 4 8; do  # N robots in one batched forward
  "$BAC" bench "$ROOT/data/policies/pusht_image.safetensors" --budget 30 --ddim-steps 0 \
    --repeats 8 --batch "$N" --methods uniform --compile --json "$@" > "$OUT/batch_$N.json"
done
for extra in "" "--compile"; do
  "$BAC" bench "$ROOT/data/policies/pusht_image.safetensors" --budget 30 --ddim-steps 0 \
    --repeats 10 --dtype bfloat16 --methods uniform $extra \
    --markdown "$OUT/bundled_image_S30_bf16${extra:+_compiled}.md" "$@" > /dev/null
done
export AMENT_PREFIX_PATH=$ROOT/.venv ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 101))}
"$BAC" replay --checkpoint "$ROOT/data/policies/pusht_lowdim.safetensors" \
  --schedule "$ROOT/data/policies/pusht_lowdim.schedule.yaml" --compare-full --json \
  > "$OUT/replay_lowdim.json"
"$BAC" replay "$ROOT/data/pusht/pusht_rollout" \
  --checkpoint "$ROOT/data/policies/pusht_image.safetensors" \
  --schedule "$ROOT/data/policies/pusht_image.schedule.yaml" --compare-full --json \
  > "$OUT/replay_image.json"
# The node end to end (issue 15): before (eager, chunks start at the tick), each fix alone, and
# the default (compiled when faster, chunks start at the next frame); then N robots per node.
DEVICE_PARAM=()
args=("$@")
for i in "${!args[@]}"; do  # bench's --device X -> the node's device:=X
  if [[ ${args[$i]} == --device ]]; then DEVICE_PARAM=(--param "device:=${args[$((i + 1))]}"); fi
done
node_run() {  # name, extra args
  local name=$1; shift
  "$BAC" replay --json "${DEVICE_PARAM[@]}" "$@" > "$OUT/node_$name.json"
}
node_run before --param compile:=false --param replan_on_fresh_observation:=false
node_run fresh_frame --param compile:=false
node_run compiled --param replan_on_fresh_observation:=false
node_run default
for N in 1 2 4 8; do
  node_run "robots_$N" --robots "$N"
  node_run "robots_${N}_eager" --robots "$N" --param compile:=false
done
# inductor options for compiled full compute, each checked against eager
"$ROOT/.venv/bin/python" "$ROOT/scripts/bench_compile_variants.py" --json \
  > "$OUT/compile_variants.jsonl"
echo "tables in $OUT"

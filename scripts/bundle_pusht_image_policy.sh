#!/usr/bin/env bash
# Bundle the Push-T camera policy from a training run and re-record the bundled bag from its own
# rollouts: fp16 export, the cache schedule (Uniform S=30, the operating point the closed loop
# chose, docs/results.md) with calibration figures and a fidelity table measured on the bag, then
# data/pusht/pusht_rollout: 12 s of the bundled image policy in closed loop (full compute,
# 4 actions per chunk), camera + joint states.
#   scripts/bundle_pusht_image_policy.sh [RUN_DIR]     (default: runs/pusht_image_conv)
# How the run is made: data/policies/README.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${1:-$ROOT/runs/pusht_image_conv}
OUT=$ROOT/data/policies
BAC=$ROOT/.venv/bin/bac
mkdir -p "$OUT" "$ROOT/docs/img" "$ROOT/build"
rm -f "$OUT/pusht_image.safetensors"
"$BAC" convert "$RUN/policy.safetensors" "$OUT/pusht_image.safetensors" --fp16
BAG=$ROOT/data/pusht/pusht_rollout
rm -rf "$BAG"
"$BAC" record "$BAG" --policy "$OUT/pusht_image.safetensors" --n-action-steps 4 \
  --duration-s 12 --seed 7
rm -f "$OUT/pusht_image.schedule.yaml"
"$BAC" calibrate "$OUT/pusht_image.safetensors" --source "$BAG" --method uniform -S 30 \
  --observations 16 --seeds 0 1 --table-budgets 10 20 30 --eval-samples 32 \
  --out "$OUT/pusht_image.schedule.yaml" --json > "$ROOT/build/calibration_image.json"
for f in similarity schedule caching_error; do
  if [[ -f $OUT/pusht_image.schedule_$f.png ]]; then
    mv "$OUT/pusht_image.schedule_$f.png" "$ROOT/docs/img/pusht_image_$f.png"
  fi
done
cp "$RUN/learning_curve.png" "$ROOT/docs/img/pusht_image_learning_curve.png" 2>/dev/null || true
echo "bundled: $(du -h "$OUT/pusht_image.safetensors" | cut -f1) policy + schedule in $OUT, bag $BAG"

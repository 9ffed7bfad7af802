#!/usr/bin/env bash
# Refresh the bundled Push-T policy from a training run: fp16 export, BAC calibration on the
# demo observations (schedule + plots + fidelity table), and the copy of its figures into docs/.
#   scripts/bundle_pusht_policy.sh [RUN_DIR]     (default runs/pusht_lowdim)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${1:-$ROOT/runs/pusht_lowdim}
OUT=$ROOT/data/policies
BAC=$ROOT/.venv/bin/bac
mkdir -p "$OUT" "$ROOT/docs/img" "$ROOT/build"
"$BAC" convert "$RUN/policy.safetensors" "$OUT/pusht_lowdim.safetensors" --fp16
"$BAC" calibrate "$OUT/pusht_lowdim.safetensors" --source "$ROOT/data/pusht/calibration_lowdim.npz" \
  -S 10 -n 5 --observations 16 --seeds 0 1 --table-budgets 10 7 5 \
  --out "$OUT/pusht_lowdim.schedule.yaml" --json > "$ROOT/build/calibration_lowdim.json"
for f in similarity schedule caching_error; do
  mv "$OUT/pusht_lowdim.schedule_$f.png" "$ROOT/docs/img/pusht_lowdim_$f.png"
done
cp "$RUN/loss.png" "$ROOT/docs/img/pusht_lowdim_loss.png"
echo "bundled: $(du -h "$OUT/pusht_lowdim.safetensors" | cut -f1) policy + schedule in $OUT"

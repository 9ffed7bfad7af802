#!/usr/bin/env bash
# Refresh the bundled Push-T policy from a training run: fp16 export, BAC calibration figures and
# fidelity table (held-out observations), and the bundled schedule: the one the closed loop
# chose (docs/results.md), evaluated again as that very file by scripts/closed_loop_sweep.sh.
#   scripts/bundle_pusht_policy.sh [RUN_DIR] [SCHEDULE_FROM_THE_SWEEP]
# (defaults: runs/pusht_lowdim, runs/sweep/schedules/uniform_30.yaml). After retraining, run the
# sweep first: a schedule belongs to one checkpoint.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${1:-$ROOT/runs/pusht_lowdim}
SCHED=${2:-$ROOT/runs/sweep/schedules/uniform_30.yaml}
OUT=$ROOT/data/policies
BAC=$ROOT/.venv/bin/bac
mkdir -p "$OUT" "$ROOT/docs/img" "$ROOT/build"
"$BAC" convert "$RUN/policy.safetensors" "$OUT/pusht_lowdim.safetensors" --fp16
"$BAC" calibrate "$OUT/pusht_lowdim.safetensors" --source "$ROOT/data/pusht/calibration_lowdim.npz" \
  -S 10 -n 5 --observations 16 --seeds 0 1 --table-budgets 10 20 30 --eval-samples 32 \
  --out "$ROOT/build/pusht_lowdim_bac10.schedule.yaml" --json > "$ROOT/build/calibration_lowdim.json"
for f in similarity schedule caching_error; do
  mv "$ROOT/build/pusht_lowdim_bac10.schedule_$f.png" "$ROOT/docs/img/pusht_lowdim_$f.png"
done
cp "$SCHED" "$OUT/pusht_lowdim.schedule.yaml"
cp "$RUN/loss.png" "$ROOT/docs/img/pusht_lowdim_loss.png"
echo "bundled: $(du -h "$OUT/pusht_lowdim.safetensors" | cut -f1) policy + schedule in $OUT"

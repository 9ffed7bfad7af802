#!/usr/bin/env bash
# The closed-loop sweeps behind docs/results.md, exactly as run: two `bac eval` processes per
# sweep (one core each, --threads 1) writing into the same resumable output folder, then one
# report over all methods. Re-running resumes; nothing already measured is recomputed.
#   scripts/closed_loop_sweep.sh [na8|na4|report]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BAC=$ROOT/.venv/bin/bac
export SDL_VIDEODRIVER=dummy
COMMON=(--threads 1 --search-evals 200)
NA8=(full uniform:20 uniform:30 bac:30 ddim:20 uniform:15 ddim:10)
NA8_B=(search:20 bac:20 bac+last:20 shared_acs:20 bac:10 bac+last:10 uniform:10
       "file:data/policies/pusht_lowdim.schedule.yaml" search:10 bac:15 bac+last:15 search:30
       acs:20)
NA4=(full search:20 uniform:20)
NA4_B=(bac:20 bac+last:20 uniform:30 search:30)
case "${1:-report}" in
  na8)
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" --methods "${NA8[@]}" &
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" --no-noise-floor \
      --methods "${NA8_B[@]}" &
    wait ;;
  na4)
    "$BAC" eval --n-action-steps 4 --episodes 100 "${COMMON[@]}" --out "$ROOT/runs/sweep_na4" \
      --methods "${NA4[@]}" &
    "$BAC" eval --n-action-steps 4 --episodes 100 "${COMMON[@]}" --out "$ROOT/runs/sweep_na4" \
      --no-noise-floor --methods "${NA4_B[@]}" &
    wait ;;
  report)
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" \
      --methods "${NA8[@]}" "${NA8_B[@]}" --gif-episodes 1
    "$BAC" eval --n-action-steps 4 --episodes 100 "${COMMON[@]}" --out "$ROOT/runs/sweep_na4" \
      --methods "${NA4[@]}" "${NA4_B[@]}" --gif-episodes 1 ;;
esac

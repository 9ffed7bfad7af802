#!/usr/bin/env bash
# The closed-loop sweeps behind docs/results.md, exactly as run: two `bac eval` processes per
# sweep (one core each, --threads 1) writing into the same resumable output folder, then one
# report over all methods. Re-running resumes; nothing already measured is recomputed.
#   scripts/closed_loop_sweep.sh [na8|na8_400|bundled|na4|report]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BAC=$ROOT/.venv/bin/bac
export SDL_VIDEODRIVER=dummy
COMMON=(--threads 1 --search-evals 200)
NA8=(full uniform:20 uniform:30 bac:30 ddim:20 uniform:15 ddim:10)
NA8_B=(search:20 bac:20 bac+last:20 shared_acs:20 bac:10 bac+last:10 uniform:10
       "file:data/policies/pusht_lowdim.schedule.yaml" search:10 bac:15 bac+last:15 search:30
       acs:20)
NA8_400=(uniform:30 bac:30)   # the candidates nearest to lossless, extended to 400 episodes
BUNDLED=("file:data/policies/pusht_lowdim.schedule.yaml")
NA4=(full uniform:30 uniform:20)
case "${1:-report}" in
  na8)
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" --methods "${NA8[@]}" &
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" --no-noise-floor \
      --methods "${NA8_B[@]}" &
    wait ;;
  na8_400)
    "$BAC" eval --episodes 400 "${COMMON[@]}" --out "$ROOT/runs/sweep" --no-noise-floor \
      --gif-episodes 0 --methods "${NA8_400[@]}" ;;
  bundled)
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" --no-noise-floor \
      --gif-episodes 0 --methods "${BUNDLED[@]}" ;;
  na4)
    "$BAC" eval --n-action-steps 4 --episodes 100 "${COMMON[@]}" --out "$ROOT/runs/sweep_na4" \
      --methods "${NA4[@]}" ;;
  report)
    "$BAC" eval --episodes 200 "${COMMON[@]}" --out "$ROOT/runs/sweep" \
      --methods "${NA8[@]}" "${NA8_B[@]}" "${BUNDLED[@]}" --gif-episodes 1
    "$BAC" eval --episodes 400 "${COMMON[@]}" --out "$ROOT/runs/sweep" --no-noise-floor \
      --gif-episodes 0 --methods "${NA8_400[@]}"
    "$BAC" eval --n-action-steps 4 --episodes 100 "${COMMON[@]}" --out "$ROOT/runs/sweep_na4" \
      --methods "${NA4[@]}" --gif-episodes 0 ;;
esac

#!/usr/bin/env bash
# The README's main job: set up (idempotent), then run the policy node on the bundled Push-T
# bag, BAC vs full compute, through real ROS 2 topics, and print a latency summary.
#
# Policy: the bundled trained Push-T policy (data/policies/, image if present, else low-dim).
# Without one, a paper-size image DP-T with seeded random weights is generated under
# build/demo/ (real timings, untrained actions). The script says which one it runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export AMENT_PREFIX_PATH=$ROOT/.venv RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 101))}
PY=$ROOT/.venv/bin/python
BAC=$ROOT/.venv/bin/bac
BAG=$ROOT/data/pusht/pusht_rollout
OUT=$ROOT/build/demo
mkdir -p "$OUT"

POLICY=""
for name in pusht_image pusht_lowdim; do
  if [[ -f $ROOT/data/policies/$name.safetensors ]]; then
    POLICY=$ROOT/data/policies/$name.safetensors
    SCHEDULE=$ROOT/data/policies/$name.schedule.yaml
    echo "== policy: bundled trained Push-T policy $POLICY (see data/policies/README.md)"
    break
  fi
done
if [[ -z $POLICY ]]; then
  POLICY=$OUT/dpt_image_paper_size_random.safetensors
  SCHEDULE=$OUT/dpt_image_paper_size_random.schedule.yaml
  echo "== policy: no trained policy is bundled; using a paper-size image DP-T with seeded"
  echo "   random weights ($POLICY): real compute and latency, untrained actions"
  if [[ ! -f $POLICY ]]; then
    "$PY" - "$POLICY" <<'PYEOF'
import sys
from bac_ros.engine.checkpoint import save_policy
from bac_ros.engine.testing import make_tiny_policy
p = make_tiny_policy("image", n_layer=8, n_emb=256, image_hw=96, num_inference_steps=100)
save_policy(p, sys.argv[1])
PYEOF
  fi
fi
if [[ ! -f $SCHEDULE ]]; then
  echo "== calibrating a BAC schedule on the bag (S=10, n=5)"
  "$BAC" calibrate "$POLICY" --source "$BAG" -S 10 -n 5 --observations 2 --out "$SCHEDULE"
fi
echo "== replaying $BAG through the node: BAC, then full compute"
"$BAC" replay "$BAG" --checkpoint "$POLICY" --schedule "$SCHEDULE" --compare-full

#!/usr/bin/env bash
# The README's main job: set up (idempotent), then run the policy node on the bundled Push-T
# bag, BAC vs full compute, through real ROS 2 topics, and print a latency summary.
#
# Policy: data/policies/pusht_image.safetensors when present (the trained reference policy,
# issue 7). Until it ships, a paper-size image DP-T (n_layer 8, n_emb 256, ResNet18 encoder,
# DDPM-100) with seeded random weights is generated under build/demo/: its timings are real,
# its actions are not a trained behaviour. The script says which one it runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export AMENT_PREFIX_PATH=$ROOT/.venv RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 101))}
PY=$ROOT/.venv/bin/python
BAC=$ROOT/.venv/bin/bac
BAG=$ROOT/data/pusht/pusht_scripted
OUT=$ROOT/build/demo
mkdir -p "$OUT"

POLICY=$ROOT/data/policies/pusht_image.safetensors
if [[ -f $POLICY ]]; then
  echo "== policy: bundled trained Push-T image policy ($POLICY)"
  SCHEDULE=$ROOT/data/policies/pusht_image.schedule.yaml
else
  POLICY=$OUT/dpt_image_paper_size_random.safetensors
  SCHEDULE=$OUT/dpt_image_paper_size_random.schedule.yaml
  echo "== policy: no trained policy is bundled yet; using a paper-size image DP-T with seeded"
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

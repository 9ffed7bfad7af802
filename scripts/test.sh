#!/usr/bin/env bash
# The README's test command: set up (idempotent) and run the whole test suite.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export AMENT_PREFIX_PATH=$ROOT/.venv RMW_IMPLEMENTATION=rmw_fastrtps_cpp
exec "$ROOT/.venv/bin/python" -m pytest test -q "$@"

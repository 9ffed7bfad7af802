#!/usr/bin/env bash
# Fresh machine -> .venv with rclpy (ROS 2 Kilted wheels from PyPI), torch and the rest,
# launch/ros2cli/launch_testing from a wheelhouse, our msg/ built by the real rosidl
# generators, and bac_ros installed so `ros2 launch bac_ros policy.launch.py` works.
#
# Idempotent and fast the second time: every stage is skipped when its inputs are unchanged
# (stamp files in .venv/.bac_ros_stamps keyed on content hashes).
#
#   scripts/bootstrap.sh            # uses python3.11, 3.12 or 3.10, whichever is found first
#   BAC_ROS_PYTHON=python3.12 scripts/bootstrap.sh
#   BAC_ROS_WHEELHOUSE=/path/to/ros2-wheelhouse scripts/bootstrap.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
STAMPS=$VENV/.bac_ros_stamps
log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[bootstrap] error:\033[0m %s\n' "$*" >&2; exit 1; }
hash_of() { { cat "$@" 2>/dev/null || true; } | sha256sum | cut -c1-16; }
stage_done() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. venv ------------------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
  PY=${BAC_ROS_PYTHON:-}
  if [[ -z $PY ]]; then
    for c in python3.11 python3.12 python3.10 python3; do
      if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(not (3,10) <= sys.version_info[:2] <= (3,12))'; then
        PY=$c; break
      fi
    done
  fi
  [[ -n $PY ]] || die "no Python 3.10-3.12 found (the ros-kilted wheels exist for those only)."
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PYBIN=$VENV/bin/python
PIP=("$PYBIN" -m pip --disable-pip-version-check -q)
PYXY=$("$PYBIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# 2. pinned Python packages --------------------------------------------------------------------
REQ_HASH=$(hash_of "$ROOT/requirements.txt" "$ROOT/requirements-ros.txt")
if ! stage_done requirements "$REQ_HASH"; then
  log "installing pinned requirements (torch, ROS 2 Kilted wheels, ...)"
  "${PIP[@]}" install -r "$ROOT/requirements-ros.txt" -r "$ROOT/requirements.txt"
  mark_done requirements "$REQ_HASH"
fi

# 3. launch / launch_ros / ros2cli / launch_testing from the wheelhouse ----------------------------
WH_HASH=""
# Only $BAC_ROS_WHEELHOUSE or the documented location next to the checkout: no machine paths.
find_wheelhouse() {
  for d in "${BAC_ROS_WHEELHOUSE:-}" "$ROOT/../shared/ros2-wheelhouse"; do
    [[ -n $d && -x $d/install.sh ]] && { cd "$d" && pwd; return 0; }
  done
  return 1
}
if ! "$PYBIN" -c 'import launch_ros, ros2cli, launch_testing' 2>/dev/null || \
   ! stage_done wheelhouse "$REQ_HASH"; then
  WH=$(find_wheelhouse) || die "no ROS 2 wheelhouse found.
What it is: a folder of Python wheels (with an install.sh) for launch, launch_ros, ros2cli and
launch_testing. Why it is needed: those four are not published on PyPI (rclpy and the message
packages are: ros-kilted-* wheels), and \`ros2 launch\`, the launch tests and \`ros2 run\` need them.
Looked in: \$BAC_ROS_WHEELHOUSE (${BAC_ROS_WHEELHOUSE:-unset}) and $ROOT/../shared/ros2-wheelhouse.
Two ways on:
  1. point BAC_ROS_WHEELHOUSE at a ros2-wheelhouse folder and re-run scripts/bootstrap.sh, or
  2. install ROS 2 from apt (ros-kilted-desktop or ros-jazzy-desktop) and use the colcon path in
     README.md (\"On a robot with ROS 2\")."
  log "installing launch/ros2cli/launch_testing from $WH"
  bash "$WH/install.sh" "$VENV" >/dev/null
  mark_done wheelhouse "$REQ_HASH"
fi

# 4. bac_ros itself (editable: tests and `bac` run the current sources). Before the msg
#    build: pip would otherwise uninstall the generated files as a previous "bac_ros". -------------------
SETUP_HASH=$(hash_of "$ROOT/setup.py")
if ! stage_done package "$SETUP_HASH-$ROOT" || ! "$VENV/bin/bac" --help >/dev/null 2>&1; then
  log "installing bac_ros (editable)"
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" --config-settings editable_mode=compat
  mark_done package "$SETUP_HASH-$ROOT"
fi

# 5. msg/ with the real rosidl generators (cmake), installed into the venv prefix ---------------
MSG_HASH=$(hash_of "$ROOT"/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/package.xml" \
  "$ROOT"/launch/* "$ROOT"/config/* "$ROOT/scripts/policy_node" "$ROOT"/data/policies/* \
  "$ROOT"/data/pusht/pusht_rollout/*)  # installed into share/bac_ros for ros2 launch
if ! stage_done msgs "$MSG_HASH-$PYXY" || ! "$PYBIN" -c 'import bac_ros.msg' 2>/dev/null; then
  command -v cmake >/dev/null || die "cmake is needed to build msg/ (Debian/Ubuntu: apt install cmake g++)."
  command -v g++ >/dev/null || die "g++ is needed to build msg/ (Debian/Ubuntu: apt install g++)."
  log "building msg/ with rosidl (cmake)"
  # The wheels' exported CMake configs name the include dirs of the manylinux machine they
  # were built on (/opt/python/cpXY-cpXY/...). Rewrite them to this interpreter's (no root).
  PY_INC=$("$PYBIN" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  NP_INC=$("$PYBIN" -c 'import numpy; print(numpy.get_include())')
  TAG=cp${PYXY/./}-cp${PYXY/./}
  while IFS= read -r f; do
    sed -i -e "s#/opt/python/$TAG/include/python$PYXY#$PY_INC#g" \
           -e "s#/opt/python/$TAG/lib/python$PYXY/site-packages/numpy/_core/include#$NP_INC#g" "$f"
  done < <(grep -rl "/opt/python/$TAG" "$VENV/share" --include='*.cmake' 2>/dev/null || true)
  BUILD=$ROOT/build/msgs-$PYXY; mkdir -p "$ROOT/build"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  export LD_LIBRARY_PATH=$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=$VENV/bin:$PATH
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
    -DBAC_ROS_INSTALL_PYTHON=OFF -DPython3_EXECUTABLE="$PYBIN" -DCMAKE_BUILD_TYPE=Release \
    >"$BUILD.log" 2>&1 || { tail -30 "$BUILD.log"; die "cmake configure failed (log: $BUILD.log)"; }
  cmake --build "$BUILD" -j "$(nproc)" >>"$BUILD.log" 2>&1 || { tail -30 "$BUILD.log"; die "msg build failed (log: $BUILD.log)"; }
  cmake --install "$BUILD" >>"$BUILD.log" 2>&1 || { tail -30 "$BUILD.log"; die "msg install failed"; }
  # The generated bac_ros/ in site-packages must stay a namespace portion, so the bac_ros
  # sources (regular package) win and merge it in via pkgutil.extend_path.
  SITE=$("$PYBIN" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$SITE/bac_ros/__init__.py"
  # ament's egg-info would make pip treat the generated files as an installed "bac_ros".
  rm -rf "$SITE"/bac_ros-*.egg-info
  mark_done msgs "$MSG_HASH-$PYXY"
fi

# 6. check ----------------------------------------------------------------------------------------
AMENT_PREFIX_PATH=$VENV "$PYBIN" - <<'EOF' || die "post-install check failed"
import rclpy, launch_ros, bac_ros, torch
from bac_ros.msg import ActionChunk, InferenceLatency
from ament_index_python.packages import get_package_prefix
get_package_prefix("bac_ros")
EOF
log "ready: . $VENV/bin/activate && export AMENT_PREFIX_PATH=\$VIRTUAL_ENV"

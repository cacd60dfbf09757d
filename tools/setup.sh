#!/usr/bin/env bash
# make setup: .venv (CPython 3.11) + pinned wheels + patched CMake exports + colcon build +
# the .venv/bin/autodice entry point. Idempotent: each step is skipped when its inputs are unchanged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMPS="$VENV/.autodice"
PY_WANT=${PYTHON:-python3.11}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" >"$STAMPS/$1"; }

# 1. interpreter -------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  say ".venv is not CPython 3.11: recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY_WANT" >/dev/null 2>&1 \
    || die "$PY_WANT not found. The ROS 2 Kilted wheels are built for CPython 3.11 only: install python3.11 (with venv) or set PYTHON=/path/to/python3.11."
  "$PY_WANT" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$PY_WANT is $("$PY_WANT" -V 2>&1), but the ROS 2 Kilted wheels need CPython 3.11."
  say "creating .venv with $("$PY_WANT" -V 2>&1)"
  "$PY_WANT" -m venv "$VENV" || die "could not create $VENV (is the python3.11 venv module installed?)"
fi
touch "$VENV/COLCON_IGNORE"   # colcon must never crawl the venv's share/ for packages
PY="$VENV/bin/python"
export VIRTUAL_ENV="$VENV" _ROS_WHEELS_BOOTSTRAP_COMPLETE=1

# 2. wheels ------------------------------------------------------------------
req_hash=$(hash_of "$ROOT/tools/requirements.txt" "$ROOT/tools/constraints.txt")
if stamp_ok wheels "$req_hash"; then
  say "wheels up to date"
else
  say "installing pinned wheels (ROS 2 Kilted rclpy + Fast DDS, rosidl/ament build tools, onnx, onnxruntime, rosbags, ...)"
  "$PY" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/tools/requirements.txt" -c "$ROOT/tools/constraints.txt" 2> >(grep -v 'WARNING: Location' >&2) \
    || die "pip install failed (see above)"
  stamp_set wheels "$req_hash"
fi

# 3. the wheels' CMake exports name the wheel builder's interpreter: point them at ours ------
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
patched=$(grep -rlZ '/opt/python/cp311-cp311/' "$VENV/share" --include='*.cmake' 2>/dev/null | tr '\0' '\n' | grep -c . || true)
if [ "$patched" -gt 0 ]; then
  say "patching $patched CMake files that hard-code /opt/python/cp311-cp311"
  grep -rlZ '/opt/python/cp311-cp311/' "$VENV/share" --include='*.cmake' | xargs -0 sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#$SITE#g"
fi

# 4. colcon build -----------------------------------------------------------------
# only what colcon turns into build output: python sources are linked (--symlink-install)
src_hash=$(cd "$ROOT" && find -L src colcon.meta -type f \( -name package.xml -o -name setup.py -o -name setup.cfg \
  -o -name CMakeLists.txt -o -name '*.msg' -o -path '*/resource/*' -o -path '*/launch/*' -o -path '*/config/*' \
  -o -name colcon.meta \) -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
if stamp_ok build "$src_hash" && [ -d "$ROOT/install/autodice_ros" ] && [ -d "$ROOT/install/autodice_msgs" ]; then
  say "workspace build up to date"
else
  say "colcon build (autodice_msgs: rosidl; autodice_ros: ament_python)"
  (
    cd "$ROOT"
    export PATH="$VENV/bin:$PATH" CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    unset COLCON_PREFIX_PATH
    "$VENV/bin/colcon" --log-base log build --base-paths src --symlink-install \
      --event-handlers console_direct- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF
  ) || die "colcon build failed: see log/latest_build/ for the package's output"
  stamp_set build "$src_hash"
fi

# 5. the entry point: .venv/bin/autodice works from any shell with nothing sourced -----------
cat >"$VENV/bin/autodice" <<EOF
#!/bin/sh
# Written by make setup. autodice_ros.environment sets the ROS paths and DDS settings, then re-executes once.
AUTODICE_WORKSPACE='$ROOT'
_ROS_WHEELS_BOOTSTRAP_COMPLETE=1
PYTHONPATH="$ROOT/src/autodice_ros\${PYTHONPATH:+:\$PYTHONPATH}"
export AUTODICE_WORKSPACE _ROS_WHEELS_BOOTSTRAP_COMPLETE PYTHONPATH
exec '$PY' -m autodice_ros "\$@"
EOF
chmod +x "$VENV/bin/autodice"
say "ready: .venv/bin/autodice --help"

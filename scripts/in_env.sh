#!/usr/bin/env bash
# Runs a command in the package's environment from the repository root, setting up the machine first if needed
# (scripts/setup.sh, then scripts/env.sh): what scripts/test.sh, demo.sh and bench.sh do before their command.
#   bash scripts/in_env.sh python -m instructsam_tools.evaluation.evaluate --help
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
source "$REPO/scripts/env.sh"
cd "$REPO"
exec "$@"

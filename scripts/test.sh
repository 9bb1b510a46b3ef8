#!/usr/bin/env bash
# The test command (README, CI): sets up the machine if needed, then runs the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_messages.py -k service`.
exec bash "$(dirname "${BASH_SOURCE[0]}")/in_env.sh" python -m pytest "$@"

#!/usr/bin/env bash
# The benchmark command (BENCHMARKS.md): sets up the machine if needed, then runs every section and prints each
# figure beside its target with PASS/FAIL. Arguments go to `python -m instructsam_tools.benchmarks`, e.g.
#   bash scripts/bench.sh --markdown BENCHMARKS.md --notes docs/benchmarks/notes.md
#   bash scripts/bench.sh --config tiny --repeats 1 --stream-frames 200 --no-full-size
exec bash "$(dirname "${BASH_SOURCE[0]}")/in_env.sh" python -m instructsam_tools.benchmarks "$@"

#!/usr/bin/env bash
# The demo command (README): sets up the machine if needed, then runs the node on a synthetic camera with a
# scripted planner (separate ROS 2 processes) and writes outputs/demo/overlay.gif and a summary.
# Extra arguments go to the demo, e.g. `bash scripts/demo.sh --frames 60 --checkpoint DIR` (see --help).
exec bash "$(dirname "${BASH_SOURCE[0]}")/in_env.sh" python -m instructsam_tools.demo "$@"

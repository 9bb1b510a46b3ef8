# Source this file (after scripts/setup.sh) to use the package from the source tree:
#   source scripts/env.sh
_isr_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_isr_site="$_isr_repo/install/instructsam_ros/lib/python3.11/site-packages"
export VIRTUAL_ENV="$_isr_repo/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# The source tree comes first so `instructsam_ros` is the source package (whose __path__ then also
# reaches the generated instructsam_ros.msg/.srv under install/).
export PYTHONPATH="$_isr_repo:$_isr_site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$_isr_repo/install/instructsam_ros/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The ROS 2 wheels install their share/ into the venv root; our message package lives in install/.
export AMENT_PREFIX_PATH="$_isr_repo/install/instructsam_ros:$VIRTUAL_ENV"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# No model hub here (and none on most robots): every checkpoint is a local directory.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset _isr_repo _isr_site

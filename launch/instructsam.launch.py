"""Start instructsam_node (a lifecycle node) with config/instructsam.yaml; each node parameter is also a
launch argument, and only the arguments given override the YAML.

    ros2 launch instructsam_ros instructsam.launch.py cameras:="[front, rear]" score_threshold:=0.6

This is exactly what the tests run without ROS 2 launch installed:
    python -m instructsam_ros.node --ros-args --params-file config/instructsam.yaml -p key:=value ...
Per-camera topics (<camera>.image_topic, <camera>.compressed) go in the YAML (params_file:=...).
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# name: (type, description); the defaults live in the YAML
ARGUMENTS = {
    "checkpoint": (str, "InstructSAM checkpoint directory"),
    "device": (str, "torch device: cpu, cuda, cuda:<n>, auto"),
    "dtype": (str, "float32, bfloat16, float16, auto"),
    "num_threads": (int, "torch CPU threads (0: torch default)"),
    "cameras": (list, "camera names, e.g. [front, rear]"),
    "image_qos.depth": (int, "image subscription queue depth"),
    "image_qos.reliability": (str, "auto, best_effort or reliable"),
    "publish_overlay": (bool, "publish <camera>/overlay for rviz"),
    "diagnostics_period": (float, "seconds between /diagnostics messages"),
    "max_instruction_chars": (int, "refuse longer instructions"),
    "max_image_pixels": (int, "refuse larger images (width x height)"),
    "default_task": (str, "referring, reasoning, multi_instance, video"),
    "keyframe_interval": (int, "detector every N frames (0: every frame)"),
    "keyframe_seconds": (float, "detector after this many seconds (0: off)"),
    "score_threshold": (float, "minimum instance score (-1: the checkpoint's calibrated threshold)"),
    "mask_threshold": (float, "mask probability threshold"),
    "nms_iou": (float, "mask NMS IoU"),
    "max_instances": (int, "detections per keyframe"),
    "max_tracked": (int, "tracks per camera"),
    "match_iou": (float, "mask IoU for a detection to continue a track"),
    "lost_patience": (int, "frames a lost track keeps its id"),
    "max_new_tokens": (int, "answer tokens per keyframe (models that write an answer first)"),
    "batch_cameras": (bool, "encode all cameras' waiting frames in one batched pass"),
    "tracker_memory_frames": (int, "past frames the tracker reads (0: the checkpoint's own)"),
    "tracker_scale": (float, "tracker at this x the detector's token grid (1: the same)"),
    "skip_unchanged": (float, "tracked frames changed by less than this (grey levels) reuse the last instances"),
    "sam3_checkpoint": (str, "facebook/sam3 directory for a checkpoint in the published InstructSAM-2B layout"),
    "autostart": (bool, "configure and activate at startup"),
}


def _typed(kind, text: str):
    """Launch arguments are strings; ROS parameters are typed (an int is not accepted for a double)."""
    value = yaml.safe_load(text)
    if kind is float:
        return float(value)
    if kind is list:
        return [str(v) for v in (value if isinstance(value, list) else [value])]
    if kind is str:
        return text
    if not isinstance(value, kind):
        raise ValueError(f"launch argument expects {kind.__name__}, got {text!r}")
    return value


DDS_PROFILES = {"large_images": "fastdds_large_images.xml"}  # config/ files, by dds_profile:= name


def _dds_profile(context):
    """dds_profile:=large_images: Fast DDS transports under which full-size best-effort frames arrive, for every
    process this launch starts (config/fastdds_large_images.xml says why)."""
    name = LaunchConfiguration("dds_profile").perform(context)
    if not name:
        return []
    if name not in DDS_PROFILES:
        raise ValueError(f"dds_profile {name!r}: expected one of {sorted(DDS_PROFILES)} or empty")
    path = os.path.join(get_package_share_directory("instructsam_ros"), "config", DDS_PROFILES[name])
    return [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", path)]


def _node(context):
    overrides = {}
    for name, (kind, _) in ARGUMENTS.items():
        text = LaunchConfiguration(name).perform(context)
        if text != "":
            overrides[name] = _typed(kind, text)
    return [LifecycleNode(
        package="instructsam_ros", executable="instructsam_node", name="instructsam_node",
        namespace=LaunchConfiguration("namespace").perform(context), output="screen", emulate_tty=True,
        parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("instructsam_ros"), "config", "instructsam.yaml")
    return LaunchDescription(
        [DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
         DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
         DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
         DeclareLaunchArgument("dds_profile", default_value="",
                               description="large_images: Fast DDS transports for full-size best-effort frames")]
        + [DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: keep the YAML value)")
           for name, (_, text) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_dds_profile), OpaqueFunction(function=_node)])

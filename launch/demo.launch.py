"""The demo on a robot with ROS 2: instructsam_node (launch/instructsam.launch.py, with the overlay on) fed by the
synthetic camera and driven by the scripted planner; optionally the recorder (GIF + summary when stopped).

    ros2 launch instructsam_ros demo.launch.py [checkpoint:=DIR] [frames:=150] [fps:=8.0] [loop:=true] [record:=false]
    rviz2  ->  Image display on /camera/overlay

The same processes `python -m instructsam_tools.demo` starts without ROS 2 launch (instructsam_tools/demo/__main__.py),
except that here the camera loops by default and the planner starts its script over with it.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

CAMERA = "camera"  # the camera of config/instructsam.yaml (topic /camera/image_raw)


def _value(name: str, kind):
    return ParameterValue(LaunchConfiguration(name), value_type=kind)


def generate_launch_description():
    share = get_package_share_directory("instructsam_ros")
    arguments = [
        DeclareLaunchArgument("checkpoint", default_value="", description="InstructSAM checkpoint (empty: the YAML's)"),
        DeclareLaunchArgument("num_threads", default_value="1", description="torch CPU threads of the node"),
        DeclareLaunchArgument("frames", default_value="150", description="frames in the synthetic video"),
        DeclareLaunchArgument("fps", default_value="8.0", description="camera frame rate"),
        DeclareLaunchArgument("size", default_value="256", description="image width and height"),
        DeclareLaunchArgument("seed", default_value="0", description="synthetic video seed"),
        DeclareLaunchArgument("video", default_value="-1", description="video index (-1: the first suitable one)"),
        DeclareLaunchArgument("loop", default_value="true", description="replay the video (and the script)"),
        DeclareLaunchArgument("record", default_value="false", description="also run demo_recorder"),
        DeclareLaunchArgument("out", default_value="outputs/demo", description="demo_recorder's output directory"),
    ]
    video = {"frames": _value("frames", int), "size": _value("size", int), "seed": _value("seed", int),
             "video": _value("video", int), "loop": _value("loop", bool)}
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "instructsam.launch.py")),
        launch_arguments={"checkpoint": LaunchConfiguration("checkpoint"), "publish_overlay": "true",
                          "num_threads": LaunchConfiguration("num_threads")}.items())
    camera = Node(
        package="instructsam_ros", executable="demo_camera", name="demo_camera", output="screen",
        parameters=[dict(video, camera=CAMERA, fps=_value("fps", float),
                         wait_for_nodes=["instructsam_node", "demo_planner"])])
    planner = Node(
        package="instructsam_ros", executable="demo_planner", name="demo_planner", output="screen",
        parameters=[dict(video, image_topic=f"/{CAMERA}/image_raw", instances_topic=f"/{CAMERA}/instances")])
    recorder = Node(
        package="instructsam_ros", executable="demo_recorder", name="demo_recorder", output="screen",
        condition=IfCondition(LaunchConfiguration("record")),
        parameters=[{"camera": CAMERA, "out": LaunchConfiguration("out"), "fps": _value("fps", float)}])
    return LaunchDescription(arguments + [node, camera, planner, recorder])

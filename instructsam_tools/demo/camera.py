"""demo_camera: a synthetic camera. Publishes the frames of a synthetic moving-objects video (demo/scene.py) as
sensor_msgs/Image rgb8 on /<camera>/image_raw with sensor-data QoS, at a fixed rate.

    python -m instructsam_tools.demo.camera --ros-args -p frames:=150 -p fps:=8.0 \\
        -p "wait_for_nodes:=[instructsam_node, demo_planner]"

Parameters: camera (name; topic /<camera>/image_raw unless `topic` is set), frames, fps, size (pixels, square),
seed and video (generator seed and video index; video -1 picks a suitable one), frame_id, loop (start again
after the last frame; false: exit 0 after it), wait_for_nodes (stream only once these nodes have subscribed to
the topic, e.g. the segmentation node after it loaded its model; wait_timeout seconds, 0 = forever).
"""
from __future__ import annotations

import sys
import time

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from instructsam_tools.demo import scene
from instructsam_tools.demo.process import run_node
from instructsam_ros.conversions import rgb_image_message

NODE_NAME = "demo_camera"
SETTLE_SECONDS = 0.3  # after every awaited node subscribed: let the data connections finish matching


class DemoCamera(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        p = self._declare
        self.camera = p("camera", "camera", "camera name; the topic is /<camera>/image_raw unless `topic` is set")
        self.topic = p("topic", "", "image topic (empty: /<camera>/image_raw)") or f"/{self.camera}/image_raw"
        self.frames = p("frames", 150, "frames in the video")
        self.fps = p("fps", 8.0, "frames per second")
        size = p("size", 256, "image width and height in pixels")
        seed = p("seed", 0, "synthetic generator seed")
        index = p("video", -1, "video index in the generator's test split (-1: the first suitable one)")
        self.frame_id = p("frame_id", "", "header.frame_id (empty: <camera>_optical_frame)") or \
            f"{self.camera}_optical_frame"
        self.loop = p("loop", False, "start again after the last frame (false: exit after it)")
        self.wait_for = list(self.declare_parameter(  # typed without a default: [] would be a byte array
            "wait_for_nodes", Parameter.Type.STRING_ARRAY,
            ParameterDescriptor(description="start streaming once these nodes subscribed")).value or [])
        self.wait_timeout = p("wait_timeout", 0.0, "seconds to wait for wait_for_nodes (0: forever)")
        if self.frames < 1 or self.fps <= 0 or size < 16:
            raise ValueError(f"need frames >= 1, fps > 0 and size >= 16; got frames={self.frames}, "
                             f"fps={self.fps}, size={size}")
        self.video_index = scene.pick_video(seed, size) if index < 0 else index
        self.video = scene.demo_video(seed, self.video_index, self.frames, size)
        self.publisher = self.create_publisher(Image, self.topic, qos_profile_sensor_data)
        self.sent = 0
        self.done = False
        self.failed = ""
        self._started = time.monotonic()
        self._ready_at: float | None = None if self.wait_for else self._started
        self._waiting_logged = False
        self.get_logger().info(
            f"video {self.video.video_id} ({len(self.video.objects)} objects, {self.frames} frames, "
            f"{size}x{size}) -> {self.topic} at {self.fps:g} fps"
            + (f"; waiting for {', '.join(self.wait_for)} to subscribe" if self.wait_for else ""))
        self.timer = self.create_timer(1.0 / self.fps, self._tick)

    def _declare(self, name: str, default, description: str):
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    def _missing(self) -> list[str]:
        """Awaited nodes that have not subscribed to the image topic yet."""
        present = {info.node_name for info in self.get_subscriptions_info_by_topic(self.topic)}
        missing = [name for name in self.wait_for if name.rsplit("/", 1)[-1] not in present]
        if not missing and self.publisher.get_subscription_count() < len(self.wait_for):
            return ["(matching)"]
        return missing

    def _tick(self) -> None:
        now = time.monotonic()
        if self._ready_at is None:
            missing = self._missing()
            if missing:
                if self.wait_timeout > 0 and now - self._started > self.wait_timeout:
                    self.failed = (f"gave up after {self.wait_timeout:g} s: {', '.join(missing)} never subscribed "
                                   f"to {self.topic}")
                    self.get_logger().error(self.failed)
                    self.done = True
                return
            self._ready_at = now
            self.get_logger().info(f"{', '.join(self.wait_for)} subscribed: streaming")
        if now - self._ready_at < SETTLE_SECONDS and self.wait_for:
            return
        index = self.sent % self.frames
        if self.sent and index == 0 and not self.loop:
            self.done = True
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        msg = rgb_image_message(self.video.frames[index], header)
        self.publisher.publish(msg)
        self.sent += 1
        if self.sent == self.frames:
            self.get_logger().info(f"published all {self.frames} frames" + ("; looping" if self.loop else ""))


def _spin_until_done(executor, node: "DemoCamera") -> int:
    while rclpy.ok() and not node.done:
        executor.spin_once(timeout_sec=0.1)
    if node.failed:
        return 1
    time.sleep(0.5)  # the last best-effort frame is on its way before the publisher goes
    return 0


def main(args: list[str] | None = None) -> int:
    return run_node(NODE_NAME, DemoCamera, args, spin=_spin_until_done)


if __name__ == "__main__":
    sys.exit(main())

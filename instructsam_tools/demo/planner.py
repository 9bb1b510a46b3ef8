"""demo_planner: a scripted planner. Publishes instructsam_ros/Instruction messages on the segmentation node's
instruction topic (RELIABLE + TRANSIENT_LOCAL, like any planner would), switching on camera frame counts.

    python -m instructsam_tools.demo.planner --ros-args -p frames:=150
    python -m instructsam_tools.demo.planner --ros-args -p 'texts:=["all the circles", "the blue star"]' \\
        -p "at_frames:=[0, 40]"

The script is `texts` (with optional `ids`, `tasks`, one per text) starting at the camera frames `at_frames`; when
`texts` is empty it is demo/scene.py's default script for the same video as demo_camera (seed, video, frames,
size: give both nodes the same values). The planner counts the frames on `image_topic` and moves to a step once
its frame is reached and the current instruction has produced `min_results` results on `instances_topic` (so each
step is seen even when the model is slower than the camera). With `loop`, it starts over every `frames` frames.
"""
from __future__ import annotations

import sys
from collections import Counter

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from instructsam_tools.demo import scene
from instructsam_tools.demo.process import run_node
from instructsam_ros.msg import InstanceMaskArray, Instruction
from instructsam_ros.node import INSTRUCTION_QOS, NODE_NAME as SEGMENTATION_NODE

NODE_NAME = "demo_planner"


class DemoPlanner(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        p = self._declare
        node = p("node", f"/{SEGMENTATION_NODE}", "the segmentation node; instructions go to <node>/instruction")
        self.camera = p("camera", "", "Instruction.camera: the camera the instructions apply to (empty: all)")
        image_topic = p("image_topic", "/camera/image_raw", "camera frames counted for the script")
        instances_topic = p("instances_topic", "/camera/instances", "the node's results for that camera")
        self.frames = p("frames", 150, "frames in the camera's video (and the loop period)")
        size, seed, index = p("size", 256, "video size"), p("seed", 0, "video seed"), p("video", -1, "video index")
        self.loop = p("loop", False, "start the script again every `frames` frames")
        self.min_results = p("min_results", 1, "results of the current instruction before the next one")
        texts, ids, tasks = (self._strings(name, text) for name, text in (
            ("texts", "instruction texts (empty: the default script for the video)"),
            ("ids", "instruction ids, one per text (empty: demo-1, demo-2, ...)"),
            ("tasks", "task per text: referring, reasoning, multi_instance, video (empty: node default)")))
        at_frames = list(self.declare_parameter("at_frames", Parameter.Type.INTEGER_ARRAY, ParameterDescriptor(
            description="camera frame at which each text starts")).value or [])
        if texts:
            if len(at_frames) != len(texts) or any(len(x) not in (0, len(texts)) for x in (ids, tasks)):
                raise ValueError(f"at_frames (and ids, tasks when given) need one entry per text: {len(texts)} "
                                 f"texts, {len(at_frames)} at_frames, {len(ids)} ids, {len(tasks)} tasks")
            self.steps = [scene.Step(at_frame=int(f), id=ids[k] if ids else f"demo-{k + 1}", text=t,
                                     task=tasks[k] if tasks else "") for k, (t, f) in enumerate(zip(texts, at_frames))]
        else:
            self.steps = scene.script_for(seed, index, self.frames, size)
        if [s.at_frame for s in self.steps] != sorted(s.at_frame for s in self.steps):
            raise ValueError(f"at_frames must not decrease, got {[s.at_frame for s in self.steps]}")
        self.publisher = self.create_publisher(Instruction, f"{node}/instruction", INSTRUCTION_QOS)
        self.create_subscription(Image, image_topic, self._on_frame, qos_profile_sensor_data)
        self.create_subscription(InstanceMaskArray, instances_topic, self._on_result,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.seen = 0  # camera frames received
        self.results: Counter[str] = Counter()  # results per instruction id
        self.current = -1
        self.finished = False
        script = "; ".join(f"frame {s.at_frame}: {s.id} {s.text!r}" for s in self.steps)
        self.get_logger().info(f"script -> {node}/instruction: {script}")
        self._advance(0)

    def _declare(self, name: str, default, description: str):
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    def _strings(self, name: str, description: str) -> list[str]:
        # typed without a default (an empty list would be typed as a byte array)
        return list(self.declare_parameter(name, Parameter.Type.STRING_ARRAY,
                                           ParameterDescriptor(description=description)).value or [])

    def _on_frame(self, msg: Image) -> None:
        self.seen += 1
        frame = self.seen - 1
        if self.loop:
            frame %= self.frames
            if frame == 0 and self.seen > 1:
                self.current, self.finished = -1, False  # the video starts over: so does the script
                self.results.clear()
        self._advance(frame)

    def _on_result(self, msg: InstanceMaskArray) -> None:
        self.results[msg.instruction_id] += 1
        last = self.steps[-1]
        if not self.finished and self.current == len(self.steps) - 1 and self.results[last.id] >= self.min_results:
            self.finished = True
            self.get_logger().info(f"script done: the last instruction {last.id} has results")

    def _advance(self, frame: int) -> None:
        """Publish the next step(s) whose frame is reached, each once the previous one has results."""
        while self.current + 1 < len(self.steps) and self.steps[self.current + 1].at_frame <= frame:
            if self.current >= 0 and self.results[self.steps[self.current].id] < self.min_results:
                return  # the node has not answered the current instruction yet: give it time
            self.current += 1
            step = self.steps[self.current]
            self.publisher.publish(Instruction(id=step.id, text=step.text, camera=self.camera, task=step.task))
            self.get_logger().info(f"frame {frame}: {step.id} {step.text!r} (step {self.current + 1}/"
                                   f"{len(self.steps)}{', task ' + step.task if step.task else ''})")


def main(args: list[str] | None = None) -> int:
    return run_node(NODE_NAME, DemoPlanner, args)


if __name__ == "__main__":
    sys.exit(main())

"""Per-camera instruction state: what each camera stream is currently asked to segment."""
from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from instructsam.templates import DEFAULT_MAX_INSTRUCTION_CHARS as DEFAULT_MAX_CHARS, TASKS

MAX_ID_CHARS = 256  # instruction ids are echoed in every result message: bounded
MAX_INSTANCES_LIMIT = 1000  # the largest max_instances a parameter or an instruction may ask for
SCORE_THRESHOLD_RANGE = (-1.0, 1.0)  # < 0: the pipeline's default (the parameter's -1: the checkpoint's)


class InstructionRejected(ValueError):
    """An instruction that cannot be applied; the message says why."""


@dataclass(frozen=True)
class ActiveInstruction:
    id: str
    text: str
    task: str = ""  # "" = the model's default template
    max_instances: int = 0  # 0 = pipeline default
    score_threshold: float = -1.0  # < 0 = pipeline default
    stamp: float = field(default_factory=time.monotonic)


def validate_instruction(text: str, camera: str, instruction_id: str, task: str, max_instances: int,
                         score_threshold: float, cameras: list[str], max_chars: int) -> str:
    """Check every field of an instruction (the Instruction message's fields) on arrival; returns the text
    stripped. Raises InstructionRejected naming the field."""
    for name, value in (("text", text), ("camera", camera), ("id", instruction_id), ("task", task)):
        if not isinstance(value, str):
            raise InstructionRejected(f"{name} must be a string, got {type(value).__name__}")
        # rclpy decodes message strings with errors="replace": undecodable bytes arrive as U+FFFD
        if "\ufffd" in value:
            raise InstructionRejected(f"{name}: its bytes are not valid UTF-8 (decoded as U+FFFD): "
                                      f"{quote_short(value)}")
        if "\x00" in value:
            raise InstructionRejected(f"{name} contains a NUL character at position {value.index(chr(0))} "
                                      f"(C/ROS strings would cut it there): {quote_short(value)}")
    if camera and camera not in cameras:
        raise InstructionRejected(f"unknown camera {quote_short(camera)}; known cameras: {cameras}")
    if task and task not in TASKS:
        raise InstructionRejected(f"unknown task {quote_short(task)}; expected one of {TASKS}")
    if len(instruction_id) > MAX_ID_CHARS:
        raise InstructionRejected(f"id is {len(instruction_id)} characters long; the limit is {MAX_ID_CHARS}")
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) \
            or not 0 <= max_instances <= MAX_INSTANCES_LIMIT:
        raise InstructionRejected(f"max_instances must be an integer in [0, {MAX_INSTANCES_LIMIT}] "
                                  f"(0: the node's default), got {max_instances!r}")
    low, high = SCORE_THRESHOLD_RANGE
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
            or not math.isfinite(score_threshold) or not low <= score_threshold <= high:
        raise InstructionRejected(f"score_threshold must be a finite number in [{low:g}, {high:g}] "
                                  f"(< 0: the node's default), got {score_threshold!r}")
    text = text.strip()
    if len(text) > max_chars:
        raise InstructionRejected(f"instruction is {len(text)} characters long; the limit is {max_chars}")
    return text


def quote_short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class InstructionBook:
    """Validates instructions and keeps the active one per camera (thread-safe).

    An instruction for camera "" applies to every camera; a camera-specific instruction overrides
    it for that camera. Empty text clears (for one camera, or for all when camera is "").
    `model_check(text, task)`, set while a model is loaded (FramePipeline does), refuses what that model cannot
    read (e.g. more tokens than it accepts) when the instruction arrives rather than on every frame.
    """

    def __init__(self, cameras: list[str], max_chars: int = DEFAULT_MAX_CHARS):
        self.cameras = list(cameras)
        self.max_chars = max_chars
        self.model_check: Callable[[str, str], None] | None = None  # raises ValueError naming the problem
        self._active: dict[str, ActiveInstruction] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def set(self, text: str, camera: str = "", instruction_id: str = "", task: str = "",
            max_instances: int = 0, score_threshold: float = -1.0) -> ActiveInstruction | None:
        """Apply an instruction; returns it, or None when it cleared. Raises InstructionRejected."""
        text = validate_instruction(text, camera, instruction_id, task, max_instances, score_threshold,
                                    self.cameras, self.max_chars)
        check = self.model_check
        if text and check is not None:
            try:
                check(text, task)
            except ValueError as err:
                raise InstructionRejected(str(err)) from err
        with self._lock:
            targets = [camera] if camera else self.cameras
            if not text:
                for cam in targets:
                    self._active.pop(cam, None)
                return None
            active = ActiveInstruction(
                id=instruction_id or f"instr-{next(self._ids)}", text=text, task=task,
                max_instances=max_instances, score_threshold=score_threshold)
            for cam in targets:
                self._active[cam] = active
            return active

    def apply_message(self, msg) -> ActiveInstruction | None:
        """set() from an instructsam_ros/Instruction message (rclpy's or rosbags'; read by field name), as the node
        and the bag replay both receive them."""
        return self.set(msg.text, msg.camera, msg.id, msg.task, int(msg.max_instances), float(msg.score_threshold))

    def get(self, camera: str) -> ActiveInstruction | None:
        with self._lock:
            return self._active.get(camera)

"""Per-camera instruction state: what each camera stream is currently asked to segment."""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MAX_CHARS = 2000  # a planner's sentence, with room; far above any template we train on
TASKS = ("referring", "reasoning", "multi_instance", "video")


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
        if camera and camera not in self.cameras:
            raise InstructionRejected(f"unknown camera {camera!r}; known cameras: {self.cameras}")
        if task and task not in TASKS:
            raise InstructionRejected(f"unknown task {task!r}; expected one of {TASKS}")
        if max_instances < 0:
            raise InstructionRejected(f"max_instances must be >= 0, got {max_instances}")
        text = text.strip()
        if len(text) > self.max_chars:
            raise InstructionRejected(
                f"instruction is {len(text)} characters long; the limit is {self.max_chars}")
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

    def get(self, camera: str) -> ActiveInstruction | None:
        with self._lock:
            return self._active.get(camera)

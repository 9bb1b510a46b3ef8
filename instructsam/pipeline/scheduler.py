"""When to run InstructSAM's detector (a keyframe) and when SAM3's tracker is enough, per camera.

Rules, checked in this order on every processed frame (dropped frames do not count):
    "instruction"  the instruction's instance identity (id, text, effective task) differs from the one the tracks
                   belong to: detect now, on this frame's features, and start a new instance set
    "first"        nothing detected yet for this instruction (after start, reset, an error, a new image size)
    "overrides"    same instruction, but its max_instances / score_threshold overrides changed: detect now,
                   keeping the tracks
    "interval"     keyframe_interval <= 1, or keyframe_interval processed frames since the last keyframe
    "seconds"      keyframe_seconds > 0 and at least that long since the last keyframe
otherwise the frame is tracked (reason "").
"""
from __future__ import annotations

from dataclasses import dataclass

from instructsam.pipeline.instructions import ActiveInstruction


@dataclass(frozen=True)
class DetectionParams:
    """Detector settings for one frame: the pipeline's, with the instruction's overrides applied."""

    task: str
    score_threshold: float | None  # None: the checkpoint's own (model.config.score_threshold)
    max_instances: int


def effective_params(instruction: ActiveInstruction, settings) -> DetectionParams:
    """ActiveInstruction overrides (task "" / max_instances 0 / score_threshold < 0 mean "pipeline default"; a
    pipeline score_threshold < 0 means the checkpoint's own, passed on as None)."""
    threshold = instruction.score_threshold if instruction.score_threshold >= 0 else settings.score_threshold
    return DetectionParams(
        task=instruction.task or settings.default_task,
        score_threshold=threshold if threshold >= 0 else None,
        max_instances=instruction.max_instances if instruction.max_instances > 0 else settings.max_instances)


def instance_key(instruction: ActiveInstruction, settings) -> tuple:
    """What makes two instructions the same instance set (a change means new tracks and new ids)."""
    return instruction.id, instruction.text, instruction.task or settings.default_task


class KeyframeScheduler:
    """Keyframe decisions for one camera. decide() is pure; record() is called once the frame was processed."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.key: tuple | None = None  # instance_key of the tracks
        self.overrides: tuple | None = None
        self.frames_since_keyframe = 0  # processed frames since the last keyframe
        self.last_keyframe_time: float | None = None

    def decide(self, instruction: ActiveInstruction, now: float, settings) -> str:
        """The reason this frame is a keyframe, or "" for a tracked frame."""
        key = instance_key(instruction, settings)
        if self.key is not None and key != self.key:
            return "instruction"
        if self.key is None or self.last_keyframe_time is None:
            return "first"
        if (instruction.max_instances, instruction.score_threshold) != self.overrides:
            return "overrides"
        if settings.keyframe_interval <= 1 or self.frames_since_keyframe + 1 >= settings.keyframe_interval:
            return "interval"
        if settings.keyframe_seconds > 0 and now - self.last_keyframe_time >= settings.keyframe_seconds:
            return "seconds"
        return ""

    def record(self, instruction: ActiveInstruction, keyframe: bool, now: float, settings) -> None:
        if keyframe:
            self.key = instance_key(instruction, settings)
            self.overrides = (instruction.max_instances, instruction.score_threshold)
            self.frames_since_keyframe = 0
            self.last_keyframe_time = now
        else:
            self.frames_since_keyframe += 1


__all__ = ["DetectionParams", "KeyframeScheduler", "effective_params", "instance_key"]

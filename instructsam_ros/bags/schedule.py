"""Timed instruction schedules for bag replay (YAML), and their per-camera application.

    instructions:                       # (a plain top-level list works too)
      - {frame: 0, camera: cam0, id: v0-0, text: "every red circle", task: video}
      - {time: 2.5, text: "all shapes except the star"}   # camera omitted or "": every camera
      - {frame: 30, camera: cam0, text: ""}                # empty text clears (no output until the next one)

An entry applies to a camera (given by name or by image topic; "" = every camera) from the first image frame of
that camera whose index on its topic (0-based, recorded order, malformed messages counted) is >= `frame`, or whose
recorded (log) time is >= the bag's start time + `time` seconds. Each camera applies its due entries just before
that frame is processed, in file order, independently of the other cameras: the same frames get the same
instructions whatever the timing mode. Optional fields: id (default "schedule-<position>"), task, max_instances,
score_threshold (the fields of instructsam_ros/msg/Instruction).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from instructsam.pipeline.instructions import InstructionBook
from instructsam_ros.bags.documents import read_document

KNOWN_KEYS = {"frame", "time", "camera", "id", "text", "task", "max_instances", "score_threshold"}


class ScheduleError(ValueError):
    """A schedule entry that cannot be applied; the message names the file and the entry."""


@dataclass(frozen=True)
class ScheduleEntry:
    position: int
    text: str
    id: str
    camera: str = ""  # name, topic, or "" for every camera
    frame: int | None = None
    time: float | None = None  # seconds from the bag's start
    task: str = ""
    max_instances: int = 0
    score_threshold: float = -1.0

    def due(self, index: int, seconds: float) -> bool:
        return index >= self.frame if self.frame is not None else seconds >= self.time


@dataclass
class InstructionSchedule:
    entries: list[ScheduleEntry]
    source: str = "<schedule>"

    @classmethod
    def constant(cls, text: str, instruction_id: str = "instruction", task: str = "") -> "InstructionSchedule":
        """One instruction for every camera from the first frame (bag_eval --instruction TEXT)."""
        return cls([ScheduleEntry(position=0, text=text, id=instruction_id, frame=0, task=task)],
                   source=f"--instruction {text!r}")

    @classmethod
    def parse(cls, data, source: str = "<schedule>") -> "InstructionSchedule":
        items = data.get("instructions") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ScheduleError(f"{source}: expected a list of instructions (or a mapping with 'instructions')")
        entries = []
        for k, item in enumerate(items):
            where = f"{source}: instructions[{k}]"
            if not isinstance(item, dict):
                raise ScheduleError(f"{where}: expected a mapping, got {type(item).__name__}")
            unknown = sorted(set(item) - KNOWN_KEYS)
            if unknown:
                raise ScheduleError(f"{where}: unknown keys {unknown} (known: {sorted(KNOWN_KEYS)})")
            if "text" not in item or not isinstance(item["text"], str):
                raise ScheduleError(f"{where}: needs 'text' (a string; empty clears)")
            if ("frame" in item) == ("time" in item):
                raise ScheduleError(f"{where}: needs exactly one of 'frame' (index) or 'time' (seconds from the "
                                    f"bag's start)")
            try:
                frame = int(item["frame"]) if "frame" in item else None
                time = float(item["time"]) if "time" in item else None
                entry = ScheduleEntry(
                    position=k, text=item["text"], id=str(item.get("id") or f"schedule-{k}"),
                    camera=str(item.get("camera") or ""), frame=frame, time=time, task=str(item.get("task") or ""),
                    max_instances=int(item.get("max_instances", 0)),
                    score_threshold=float(item.get("score_threshold", -1.0)))
            except (TypeError, ValueError) as err:
                raise ScheduleError(f"{where}: {err}") from None
            if (frame is not None and frame < 0) or (time is not None and time < 0):
                raise ScheduleError(f"{where}: 'frame' and 'time' must be >= 0")
            entries.append(entry)
        return cls(entries, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InstructionSchedule":
        return cls.parse(read_document(path, "instruction schedule", ScheduleError, fmt="yaml"), str(path))

    def to_yaml(self) -> str:
        out = []
        for e in self.entries:
            d = {("frame" if e.frame is not None else "time"): e.frame if e.frame is not None else e.time,
                 "camera": e.camera, "id": e.id, "text": e.text}
            if e.task:
                d["task"] = e.task
            if e.max_instances:
                d["max_instances"] = e.max_instances
            if e.score_threshold >= 0:
                d["score_threshold"] = e.score_threshold
            out.append(d)
        return yaml.safe_dump({"instructions": out}, sort_keys=False, allow_unicode=True)

    def cursor(self, cameras: dict[str, str], start_time_ns: int) -> "ScheduleCursor":
        """cameras: name -> topic of the bag being replayed."""
        return ScheduleCursor(self, cameras, start_time_ns)


class ScheduleCursor:
    """Applies a schedule to one replay, camera by camera."""

    def __init__(self, schedule: InstructionSchedule, cameras: dict[str, str], start_time_ns: int):
        by_topic = {topic: name for name, topic in cameras.items()}
        self.start_time_ns = start_time_ns
        self.pending: dict[str, list[ScheduleEntry]] = {name: [] for name in cameras}
        for e in schedule.entries:
            if not e.camera:
                targets = list(cameras)
            elif e.camera in cameras:
                targets = [e.camera]
            elif e.camera in by_topic:
                targets = [by_topic[e.camera]]
            else:
                raise ScheduleError(f"{schedule.source}: instructions[{e.position}]: camera {e.camera!r} is not in "
                                    f"this bag (cameras: {', '.join(f'{n} ({t})' for n, t in cameras.items())})")
            for name in targets:
                self.pending[name].append(e)

    def apply_due(self, book: InstructionBook, camera: str, index: int, log_time_ns: int) -> list[ScheduleEntry]:
        """Apply (in file order) every entry for `camera` due at this frame; returns them. Raises
        InstructionRejected (a ValueError) for an entry the InstructionBook refuses."""
        seconds = (log_time_ns - self.start_time_ns) / 1e9
        queue = self.pending[camera]
        due = [e for e in queue if e.due(index, seconds)]
        if due:
            self.pending[camera] = [e for e in queue if not e.due(index, seconds)]
        for e in due:
            book.set(e.text, camera, e.id, e.task, e.max_instances, e.score_threshold)
        return due


__all__ = ["ScheduleError", "ScheduleEntry", "InstructionSchedule", "ScheduleCursor"]

"""Reading rosbag2 recordings (sqlite3 or mcap, via rosbags' AnyReader): the camera topics (sensor_msgs/Image and
sensor_msgs/CompressedImage) and, optionally, an instruction topic, in recorded order. Everything else in the bag is
ignored (and listed). Messages are deserialised one at a time by the caller, so a malformed one is reported and
skipped without stopping the replay.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rosbags.highlevel import AnyReader

from instructsam_ros.bags.typestore import IMAGE_TYPES, INSTRUCTION_TYPES, typestore

IMAGE_SUFFIXES = ("image_raw", "image_rect_color", "image_rect", "image_color", "image_mono", "image")


class BagError(RuntimeError):
    """A bag that cannot be opened or read, or a topic choice that does not fit it; the message names the bag."""


def camera_name(topic: str) -> str:
    """A camera name for an image topic: "/front/image_raw" -> "front", "/front/image_raw/compressed" -> "front",
    "/image" -> "image", "/a/b/c" -> "a_b_c". Names are valid ROS name tokens (the node's camera names)."""
    parts = [p for p in topic.strip("/").split("/") if p]
    if parts and parts[-1] == "compressed":
        parts = parts[:-1]
    if len(parts) > 1 and parts[-1] in IMAGE_SUFFIXES:
        parts = parts[:-1]
    name = re.sub(r"\W", "_", "_".join(parts), flags=re.ASCII) or "camera"
    return name if not name[0].isdigit() else f"cam_{name}"


def camera_names(topics: list[str]) -> dict[str, str]:
    """topic -> camera name; topics whose short names collide get their full (sanitised) topic as the name."""
    short = {t: camera_name(t) for t in topics}
    clashes = {n for n in short.values() if list(short.values()).count(n) > 1}
    out = {}
    for t, n in short.items():
        if n in clashes:
            n = re.sub(r"\W", "_", t.strip("/"), flags=re.ASCII)
            n = n if n and not n[0].isdigit() else f"cam_{n}"
        out[t] = n
    return out


@dataclass
class BagMessage:
    seq: int  # position among the selected messages, recorded order
    topic: str
    msgtype: str
    kind: str  # "image" | "instruction"
    log_time_ns: int
    raw: bytes


class BagSource:
    """One bag opened for replay.

    topics: None (every Image/CompressedImage topic), or a list of topics, or {topic: camera name}.
    """

    def __init__(self, path: str | os.PathLike, topics=None, instruction_topic: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self.store = typestore()
        try:
            self.reader = AnyReader([self.path], default_typestore=self.store)
            self.reader.open()
        except Exception as err:  # rosbags raises its own error types for every kind of unreadable bag
            raise BagError(f"cannot open bag {self.path}: {type(err).__name__}: {err}") from err
        try:
            self._select(topics, instruction_topic)
        except Exception:
            self.close()
            raise

    def _select(self, topics, instruction_topic) -> None:
        by_topic: dict[str, list] = {}
        for c in self.reader.connections:
            by_topic.setdefault(c.topic, []).append(c)
        types = {t: cs[0].msgtype for t, cs in by_topic.items()}
        image_topics = sorted(t for t, ty in types.items() if ty in IMAGE_TYPES)
        if topics is None:
            chosen = camera_names(image_topics)
        else:
            chosen = dict(topics) if isinstance(topics, dict) else camera_names(list(topics))
            for t in chosen:
                if t not in types:
                    raise BagError(f"{self.path}: topic {t!r} is not in the bag (image topics: {image_topics})")
                if types[t] not in IMAGE_TYPES:
                    raise BagError(f"{self.path}: topic {t!r} is {types[t]}, not one of {IMAGE_TYPES}")
        for t in chosen:
            if topics is not None and isinstance(topics, dict) and not chosen[t]:
                chosen[t] = camera_name(t)
        names = list(chosen.values())
        if len(set(names)) != len(names):
            raise BagError(f"{self.path}: two topics map to the same camera name: {chosen}")
        if instruction_topic is not None:
            if instruction_topic not in types:
                raise BagError(f"{self.path}: instruction topic {instruction_topic!r} is not in the bag "
                               f"(topics: {sorted(types)})")
            if types[instruction_topic] not in INSTRUCTION_TYPES:
                raise BagError(f"{self.path}: instruction topic {instruction_topic!r} is {types[instruction_topic]}, "
                               f"not one of {INSTRUCTION_TYPES}")
        self.topic_types = types
        self.camera_of = chosen  # topic -> camera
        self.cameras = {cam: t for t, cam in chosen.items()}  # camera -> topic
        self.instruction_topic = instruction_topic
        self.ignored_topics = sorted(t for t in types if t not in chosen and t != instruction_topic)
        wanted = set(chosen) | ({instruction_topic} if instruction_topic else set())
        self.connections = [c for c in self.reader.connections if c.topic in wanted]
        self.image_count = sum(c.msgcount for c in self.connections if c.topic in chosen)

    def require_cameras(self) -> None:
        """A bag to replay must have an image topic: say so, listing what it has, before any model loads."""
        if not self.cameras:
            listed = ", ".join(f"{t} ({ty})" for t, ty in sorted(self.topic_types.items())) or "none"
            raise BagError(f"{self.path}: the bag has no image topics (sensor_msgs/Image or CompressedImage) to "
                           f"replay; its topics: {listed}")

    @property
    def storage(self) -> str:
        files = [p.suffix for p in self.path.iterdir()] if self.path.is_dir() else [self.path.suffix]
        return "mcap" if ".mcap" in files else "sqlite3" if ".db3" in files else "unknown"

    @property
    def start_time_ns(self) -> int:
        return int(self.reader.start_time)

    def messages(self) -> Iterator[BagMessage]:
        """The selected messages in recorded (log time) order."""
        try:
            for seq, (conn, timestamp, raw) in enumerate(self.reader.messages(connections=self.connections)):
                kind = "image" if conn.topic in self.camera_of else "instruction"
                yield BagMessage(seq, conn.topic, conn.msgtype, kind, int(timestamp), bytes(raw))
        except BagError:
            raise
        except Exception as err:
            raise BagError(f"cannot read bag {self.path}: {type(err).__name__}: {err}") from err

    def deserialize(self, message: BagMessage):
        return self.reader.deserialize(message.raw, message.msgtype)

    def close(self) -> None:
        try:
            self.reader.close()
        except Exception:
            pass

    def __enter__(self) -> "BagSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BagError", "BagSource", "BagMessage", "camera_name", "camera_names"]

"""The rosbags typestore used for reading and writing bags: ROS 2's standard types plus this package's messages,
registered from the package's own .msg files (so a written bag carries exactly the package's definitions and type
hashes; tests/test_bag_output.py checks them against the rosidl-generated ones).

No ROS import: the .msg files are read from the repository's msg/ directory (development), or from
share/instructsam_ros/msg under an AMENT_PREFIX_PATH entry (a colcon install), or from $INSTRUCTSAM_MSG_DIR.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from instructsam.resources import share_dirs

PACKAGE = "instructsam_ros"
MESSAGES = ("InstanceMask", "InstanceMaskArray", "Instruction")
BASE_STORE = Stores.ROS2_KILTED  # the ROS 2 distribution whose wheels the node runs on

INSTANCE_MASK = f"{PACKAGE}/msg/InstanceMask"
INSTANCE_MASK_ARRAY = f"{PACKAGE}/msg/InstanceMaskArray"
INSTRUCTION = f"{PACKAGE}/msg/Instruction"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
INSTRUCTION_TYPES = (INSTRUCTION, STRING)


def msg_dir_candidates() -> list[Path]:
    """Where the package's .msg files are looked for, in order."""
    out = []
    if os.environ.get("INSTRUCTSAM_MSG_DIR"):
        out.append(Path(os.environ["INSTRUCTSAM_MSG_DIR"]))
    return out + [d / "msg" for d in share_dirs()]


def find_msg_dir() -> Path:
    candidates = msg_dir_candidates()
    for d in candidates:
        if all((d / f"{name}.msg").is_file() for name in MESSAGES):
            return d
    raise FileNotFoundError(
        f"the {PACKAGE} message definitions ({', '.join(m + '.msg' for m in MESSAGES)}) were not found; looked in: "
        f"{', '.join(str(c) for c in candidates)} (set INSTRUCTSAM_MSG_DIR to the package's msg/ directory)")


@functools.lru_cache(maxsize=None)
def _typestore(msg_dir: str) -> Typestore:
    store = get_typestore(BASE_STORE)
    types = {}
    for name in MESSAGES:
        path = Path(msg_dir) / f"{name}.msg"
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def typestore(msg_dir: str | os.PathLike | None = None) -> Typestore:
    """ROS 2 standard types + instructsam_ros/msg/* (cached per msg directory)."""
    return _typestore(str(Path(msg_dir).resolve() if msg_dir is not None else find_msg_dir().resolve()))


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (any object with sec, nanosec) -> integer nanoseconds. Out-of-range nanosec values
    (some recorders write nanosec >= 1e9, e.g. the ros2bag_tools test bag) are kept as they are, so the key is
    still unique and the same everywhere."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


__all__ = ["PACKAGE", "MESSAGES", "INSTANCE_MASK", "INSTANCE_MASK_ARRAY", "INSTRUCTION", "IMAGE", "COMPRESSED_IMAGE",
           "STRING", "IMAGE_TYPES", "INSTRUCTION_TYPES", "typestore", "find_msg_dir", "msg_dir_candidates",
           "stamp_ns"]

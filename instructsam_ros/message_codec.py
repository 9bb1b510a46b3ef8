"""The fields of the package's result messages (msg/InstanceMask.msg, msg/InstanceMaskArray.msg), computed once for
every writer: the node fills rclpy messages with them, the bag evaluator rosbags messages and its records.

No ROS import here: the state codes are the .msg constants (tests/test_messages.py checks them against the
generated messages), and the message classes come from the caller.
"""
from __future__ import annotations

import numpy as np

from instructsam.rle import decode_rle, encode_rle, rle_box  # noqa: F401  (the codec's RLE, re-exported)

STATE_CODES = {"new": 0, "tracked": 1, "lost": 2}  # InstanceMask.STATE_NEW / STATE_TRACKED / STATE_LOST
STATE_NAMES = {code: name for name, code in STATE_CODES.items()}


def instance_fields(track_id: str, score: float, state: str | int, counts: str, height: int, width: int) -> dict:
    """InstanceMask's fields for an instance whose mask is already RLE-encoded."""
    return dict(id=str(track_id), score=float(np.float32(score)),
                state=STATE_CODES[state] if isinstance(state, str) else int(state),
                bbox=rle_box(counts, height, width), mask_height=int(height), mask_width=int(width),
                rle_counts=counts)


def array_fields(header, camera: str, height: int, width: int, instruction_id: str, instruction: str,
                 instances: list, keyframe: bool = False, frame_index: int = 0, processing_ms: float = 0.0,
                 latency_ms: float = 0.0, answer: str = "") -> dict:
    """InstanceMaskArray's fields (`instances`: InstanceMask messages of the same message family)."""
    return dict(header=header, camera=str(camera), height=int(height), width=int(width),
                instruction_id=str(instruction_id), instruction=str(instruction), answer=str(answer),
                instances=list(instances),
                keyframe=bool(keyframe), frame_index=int(frame_index), processing_ms=float(processing_ms),
                latency_ms=float(latency_ms))


def rgb_image_fields(rgb: np.ndarray, header) -> dict:
    """sensor_msgs/Image fields for an (H, W, 3) uint8 RGB image (rgb8; `data` a flat uint8 array)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return dict(header=header, height=int(height), width=int(width), encoding="rgb8", is_bigendian=0,
                step=int(width) * 3, data=rgb.reshape(-1))


__all__ = ["STATE_CODES", "STATE_NAMES", "encode_rle", "decode_rle", "rle_box", "instance_fields", "array_fields",
           "rgb_image_fields"]

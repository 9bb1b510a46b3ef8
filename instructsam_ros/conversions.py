"""rclpy result messages from the pipeline's instances, and masks back from them. The fields come from the one
codec the bag writer uses too (instructsam.message_codec)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from instructsam.message_codec import STATE_CODES, STATE_NAMES, array_fields, decode_rle, encode_rle, instance_fields
from instructsam_ros.msg import InstanceMask, InstanceMaskArray

__all__ = ["STATE_CODES", "STATE_NAMES", "make_instance", "make_instance_array", "decode_mask", "decode_masks"]


def make_instance(track_id: str, score: float, state: str | int, mask: np.ndarray) -> InstanceMask:
    return InstanceMask(**instance_fields(track_id, score, state, encode_rle(mask), *mask.shape))


def make_instance_array(header, camera: str, height: int, width: int, instruction_id: str, instruction: str,
                        instances: Iterable[InstanceMask], **timing) -> InstanceMaskArray:
    """timing: keyframe, frame_index, processing_ms, latency_ms (defaults: False, 0, 0.0, 0.0)."""
    return InstanceMaskArray(**array_fields(header, camera, height, width, instruction_id, instruction,
                                            list(instances), **timing))


def decode_mask(msg: InstanceMask) -> np.ndarray:
    """InstanceMask -> (H, W) bool mask."""
    return decode_rle(msg.rle_counts, msg.mask_height, msg.mask_width)


def decode_masks(msg: InstanceMaskArray) -> np.ndarray:
    """All masks of an InstanceMaskArray as one (N, H, W) bool array (N may be 0)."""
    masks = [decode_mask(inst) for inst in msg.instances]
    if not masks:
        return np.zeros((0, int(msg.height), int(msg.width)), dtype=bool)
    return np.stack(masks)

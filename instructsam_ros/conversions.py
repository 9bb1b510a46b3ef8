"""rclpy messages from the pipeline's results (instance masks, the overlay image) and masks back from them. The
fields come from the one codec the bag writer uses too (instructsam_ros.message_codec); the overlay's drawing is
instructsam.pipeline.drawing (no ROS types), shared with the demo GIF and the bag evaluator."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from sensor_msgs.msg import Image

from instructsam.pipeline.drawing import draw_result
from instructsam_ros.message_codec import (STATE_CODES, STATE_NAMES, array_fields, decode_rle, encode_rle, instance_fields,
                                          rgb_image_fields)
from instructsam_ros.msg import InstanceMask, InstanceMaskArray

__all__ = ["STATE_CODES", "STATE_NAMES", "make_instance", "make_instance_array", "decode_mask", "decode_masks",
           "rgb_image_message", "overlay_message"]


def make_instance(track_id: str, score: float, state: str | int, mask: np.ndarray) -> InstanceMask:
    return InstanceMask(**instance_fields(track_id, score, state, encode_rle(mask), *mask.shape))


def make_instance_array(header, camera: str, height: int, width: int, instruction_id: str, instruction: str,
                        instances: Iterable[InstanceMask], **timing) -> InstanceMaskArray:
    """timing: keyframe, frame_index, processing_ms, latency_ms, answer (defaults: False, 0, 0.0, 0.0, "")."""
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


def rgb_image_message(rgb: np.ndarray, header) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8 with the given header."""
    fields = rgb_image_fields(rgb, header)
    return Image(**dict(fields, data=fields["data"].tobytes()))  # rclpy takes the pixels as bytes


def overlay_message(image: np.ndarray, result: Any, header) -> Image:
    """The frame with the result's masks, boxes, ids and instruction drawn on it, as an rgb8 Image."""
    return rgb_image_message(draw_result(image, result), header)

"""The overlay image as a ROS message; the drawing itself is instructsam.pipeline.overlay (no ROS types),
shared with the demo GIF and the bag evaluator."""
from __future__ import annotations

from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from instructsam.message_codec import rgb_image_fields
from instructsam.pipeline.overlay import draw_result


def rgb_image_message(rgb: np.ndarray, header) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8 with the given header."""
    fields = rgb_image_fields(rgb, header)
    return Image(**dict(fields, data=fields["data"].tobytes()))  # rclpy takes the pixels as bytes


def overlay_message(image: np.ndarray, result: Any, header) -> Image:
    """The frame with the result's masks, boxes, ids and instruction drawn on it, as an rgb8 Image."""
    return rgb_image_message(draw_result(image, result), header)

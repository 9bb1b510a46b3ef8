"""Camera image bytes -> (H, W, 3) uint8 RGB for the model, with clear errors for bad input.

Works on the raw fields of `sensor_msgs/Image` and `sensor_msgs/CompressedImage`, so the ROS node
(rclpy messages) and the bag evaluator (rosbags messages) share it without any ROS import here.

- Raw images: the colour conversion (bayer demosaicing, YUV 4:2:2, BGR/RGBA orders, 16 -> 8 bit as
  `v * 255 / 65535`, byte order) is rosbags-image's, which follows cv_bridge. Before it, this module
  checks what rosbags-image does not: the encoding is a camera colour format, the size is sane, `step`
  fits the row, the buffer holds `step * height` bytes; and it removes row padding (rosbags-image
  ignores `step`).
- Compressed images: Pillow, because it reads the size from the header before decoding (a 100 MP
  image is refused without being decoded) and raises on truncated data, where OpenCV may return a
  partly grey image.
"""
from __future__ import annotations

import io
import warnings
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage
from rosbags.image import ImageError, image_to_cvimage

from instructsam.errors import ImageInputError

DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.7 MP: above any robot camera we expect, far below what fills memory

# Bytes per pixel of each raw encoding we accept (sensor_msgs/image_encodings names). Generic
# encodings ("8UC3", "16UC1", "32FC1", ...) carry no colour meaning (depth, disparity, masks), and
# nv12/nv21 store 1.5 rows per image row, which rosbags-image does not handle: both are refused.
RAW_ENCODINGS: dict[str, int] = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1,
    "rgb16": 6, "bgr16": 6, "rgba16": 8, "bgra16": 8, "mono16": 2,
    "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
    "bayer_rggb16": 2, "bayer_bggr16": 2, "bayer_gbrg16": 2, "bayer_grbg16": 2,
    "uyvy": 2, "yuv422": 2, "yuyv": 2, "yuv422_yuy2": 2,
}
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def check_size(height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse empty images and images above `max_pixels` (before anything is allocated for them)."""
    if height <= 0 or width <= 0:
        raise ImageInputError(f"image has zero size ({width}x{height} pixels)")
    if height * width > max_pixels:
        raise ImageInputError(
            f"image is too large: {width}x{height} = {width * height} pixels, the limit (max_pixels) is "
            f"{max_pixels}; refused before decoding")


def decode_raw(encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The fields of a sensor_msgs/Image -> (H, W, 3) uint8 RGB. Raises ImageInputError naming the problem.

    data: any buffer (bytes, array.array, numpy uint8); bytes past `step * height` are ignored.
    """
    bpp = RAW_ENCODINGS.get(encoding)
    if bpp is None:
        hint = (" (a depth/disparity/generic matrix, not a camera colour image)"
                if encoding[:1].isdigit() else "")
        raise ImageInputError(
            f"unsupported image encoding {encoding!r}{hint}; supported: {', '.join(RAW_ENCODINGS)}")
    height, width, step = int(height), int(width), int(step)
    check_size(height, width, max_pixels)
    row_bytes = width * bpp
    if step < row_bytes:
        raise ImageInputError(
            f"{encoding} image {width}x{height}: step {step} is smaller than width x bytes per pixel = "
            f"{width} x {bpp} = {row_bytes}")
    needed = step * height
    size = memoryview(data).nbytes
    if size < needed:
        raise ImageInputError(
            f"{encoding} image {width}x{height}: data has {size} bytes, but step x height = {step} x {height} "
            f"= {needed} bytes are needed")
    rows = np.frombuffer(data, dtype=np.uint8, count=needed).reshape(height, step)[:, :row_bytes]
    packed = SimpleNamespace(encoding=encoding, height=height, width=width, is_bigendian=bool(is_bigendian),
                             data=np.ascontiguousarray(rows))
    try:
        rgb = image_to_cvimage(packed, "rgb8")
    except (ImageError, cv2.error) as err:  # e.g. YUV 4:2:2 with an odd width
        raise ImageInputError(f"cannot convert {encoding} image {width}x{height} to RGB: {err}") from err
    # Always a fresh array: without conversion rosbags-image returns a view of the message buffer.
    return np.array(rgb, dtype=np.uint8, copy=True)


def decode_compressed(format: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The fields of a sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB.

    The format string is informational (the codec is detected from the bytes), except that
    compressedDepth payloads (depth images) are refused. 16-bit grey PNGs are scaled to 8 bit like raw
    16-bit images.
    """
    if "compresseddepth" in format.replace(" ", "").lower():
        raise ImageInputError(f"compressed image format {format!r} is a depth image, not a camera colour image")
    raw = bytes(data)
    if not raw:
        raise ImageInputError(f"compressed image ({format!r}) has no data")
    try:
        with warnings.catch_warnings():  # Pillow's decompression-bomb warning: check_size below decides
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(raw)) as img:
                check_size(img.height, img.width, max_pixels)  # header only: nothing decoded yet
                img.load()  # raises on truncated or corrupt data
                if img.mode in _PIL_16BIT_MODES:
                    grey = np.multiply(np.asarray(img), 255.0 / 65535.0).clip(0, 255).astype(np.uint8)
                    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
                if img.mode == "F":
                    raise ImageInputError(f"compressed image ({format!r}) holds floating-point pixels "
                                          "(a depth/disparity map), not a camera colour image")
                return np.array(img.convert("RGB"), dtype=np.uint8)
    except ImageInputError:
        raise
    except PILImage.DecompressionBombError as err:  # over Pillow's own hard limit, still before decoding
        raise ImageInputError(f"compressed image ({format!r}) is too large: {err}") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for undecodable data
        raise ImageInputError(
            f"cannot decode compressed image (format {format!r}, {len(raw)} bytes): {err}") from err


def decode_image_message(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An Image or CompressedImage message object (rclpy or rosbags; duck-typed) -> (H, W, 3) uint8 RGB."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.format, msg.data, max_pixels)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels)


__all__ = ["DEFAULT_MAX_PIXELS", "RAW_ENCODINGS", "check_size", "decode_raw", "decode_compressed",
           "decode_image_message"]

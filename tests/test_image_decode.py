"""Camera image decoding (instructsam.pipeline.image_decode): every supported encoding against
expectations computed independently of the decoder, every kind of bad input with its message, and the
real (partly malformed) rosbag2 files in ../shared/realdata/rosbags/."""
from __future__ import annotations

import array
import time

import cv2
import numpy as np
import pytest

from instructsam.errors import ImageInputError
from instructsam.pipeline.image_decode import (
    DEFAULT_MAX_PIXELS,
    decode_compressed,
    decode_image_message,
    decode_raw,
)

RNG = np.random.default_rng(7)
H, W = 6, 8
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)


def raw(encoding: str, pixels: np.ndarray, bigendian: bool = False) -> np.ndarray:
    h, w = pixels.shape[:2]
    data = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<")).tobytes()
    return decode_raw(encoding, h, w, len(data) // h, data, is_bigendian=bigendian)


def to8(v: np.ndarray) -> np.ndarray:
    """16 -> 8 bit as cv_bridge does: floor(v * 255 / 65535), in exact integer arithmetic."""
    return (v.astype(np.uint32) * 255 // 65535).astype(np.uint8)


# ---- colour and grey encodings ---------------------------------------------------------------------------------
ENCODED = [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[..., ::-1], RGB),
    ("rgba8", np.dstack([RGB, np.full((H, W), 9, np.uint8)]), RGB),
    ("bgra8", np.dstack([RGB[..., ::-1], np.full((H, W), 9, np.uint8)]), RGB),
    ("mono8", RGB[..., 0], np.repeat(RGB[..., :1], 3, axis=2)),
    ("rgb16", RGB16, to8(RGB16)),
    ("bgr16", RGB16[..., ::-1], to8(RGB16)),
    ("rgba16", np.dstack([RGB16, np.full((H, W), 5, np.uint16)]), to8(RGB16)),
    ("bgra16", np.dstack([RGB16[..., ::-1], np.full((H, W), 5, np.uint16)]), to8(RGB16)),
    ("mono16", RGB16[..., 0], np.repeat(to8(RGB16[..., :1]), 3, axis=2)),
]
# byte order only matters for 16-bit encodings
CASES = [(*case, False) for case in ENCODED] + [(*case, True) for case in ENCODED if case[1].dtype == np.uint16]


@pytest.mark.parametrize("encoding, pixels, expected, bigendian", CASES,
                         ids=[f"{c[0]}{'-be' if c[3] else ''}" for c in CASES])
def test_colour_and_grey_encodings(encoding, pixels, expected, bigendian):
    out = raw(encoding, np.ascontiguousarray(pixels), bigendian)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_16bit_full_range_maps_exactly_onto_8bit():
    levels = np.arange(256, dtype=np.uint16)
    out = raw("mono16", (levels * 257).reshape(16, 16))
    np.testing.assert_array_equal(out[..., 0].reshape(-1), levels)


# ---- bayer: mosaic a known colour image with each pattern, then demosaic --------------------------------------
BAYER = {"rggb": ("RG", "GB"), "bggr": ("BG", "GR"), "gbrg": ("GB", "RG"), "grbg": ("GR", "BG")}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Keep, at each pixel, only the channel the colour filter of `pattern` passes there."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(BAYER[pattern][dy][dx])]
    return out


@pytest.mark.parametrize("pattern", list(BAYER))
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_recover_the_colour(pattern, bits):
    # A uniform colour demosaics exactly under any interpolation, so a wrong pattern (R/B or G swapped)
    # cannot pass; distinct channel values make every swap visible.
    colour = np.array([200, 90, 30], np.uint8)
    scene = np.broadcast_to(colour, (12, 16, 3))
    pixels = scene.astype(np.uint16) * 257 if bits == 16 else scene
    out = raw(f"bayer_{pattern}{bits}", mosaic(pixels, pattern), bigendian=(bits == 16))
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out[1:-1, 1:-1], np.broadcast_to(colour, (10, 14, 3)))


@pytest.mark.parametrize("pattern", list(BAYER))
def test_bayer_on_a_smooth_image_is_close_to_the_scene(pattern):
    yy, xx = np.mgrid[0:32, 0:40]
    scene = np.dstack([xx * 6, yy * 7, 255 - xx * 6]).astype(np.uint8)
    out = raw(f"bayer_{pattern}8", mosaic(scene, pattern))
    err = np.abs(out[2:-2, 2:-2].astype(int) - scene[2:-2, 2:-2])
    assert err.mean() < 3, f"{pattern}: mean error {err.mean():.1f}"


# ---- YUV 4:2:2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding, code", [
    ("uyvy", cv2.COLOR_YUV2RGB_UYVY), ("yuv422", cv2.COLOR_YUV2RGB_UYVY),
    ("yuyv", cv2.COLOR_YUV2RGB_YUYV), ("yuv422_yuy2", cv2.COLOR_YUV2RGB_YUYV),
])
def test_yuv422(encoding, code):
    packed = RNG.integers(16, 240, (H, W, 2), dtype=np.uint8)
    out = raw(encoding, packed)
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, code))
    other = cv2.COLOR_YUV2RGB_YUYV if code == cv2.COLOR_YUV2RGB_UYVY else cv2.COLOR_YUV2RGB_UYVY
    assert not np.array_equal(out, cv2.cvtColor(packed, other)), "the byte layout must matter"


# ---- layout: row padding, trailing bytes, buffer types ----------------------------------------------------------
def test_row_padding_is_removed():
    step = W * 3 + 5
    padded = np.full((H, step), 77, np.uint8)
    padded[:, :W * 3] = RGB.reshape(H, W * 3)
    out = decode_raw("rgb8", H, W, step, padded.tobytes())
    np.testing.assert_array_equal(out, RGB)


def test_trailing_bytes_are_ignored_and_rclpy_array_data_works():
    data = array.array("B", RGB.tobytes() + b"\x01\x02\x03")  # rclpy gives uint8[] fields as array.array
    out = decode_raw("rgb8", H, W, W * 3, data)
    np.testing.assert_array_equal(out, RGB)
    assert not np.shares_memory(out, np.frombuffer(data, np.uint8)), "the result must not alias the message"


# ---- bad raw input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "8UC3", "nv12", "RGB8", "jpeg", ""])
def test_unsupported_encodings_are_named(encoding):
    with pytest.raises(ImageInputError, match=f"unsupported image encoding {encoding!r}"):
        decode_raw(encoding, H, W, W * 4, bytes(H * W * 4))


def test_float_encoding_message_says_why():
    with pytest.raises(ImageInputError, match="depth/disparity"):
        decode_raw("32FC1", H, W, W * 4, bytes(H * W * 4))


def test_data_shorter_than_step_times_height():
    with pytest.raises(ImageInputError) as err:
        decode_raw("rgb8", 480, 640, 1920, bytes(30))
    assert "data has 30 bytes" in str(err.value) and "1920 x 480 = 921600" in str(err.value)


def test_step_smaller_than_a_row():
    with pytest.raises(ImageInputError, match="step 10 is smaller than width x bytes per pixel = 8 x 3 = 24"):
        decode_raw("rgb8", H, W, 10, bytes(10 * H))


@pytest.mark.parametrize("height, width", [(0, 0), (0, 8), (6, 0)])
def test_zero_size(height, width):
    with pytest.raises(ImageInputError, match="zero size"):
        decode_raw("rgb8", height, width, width * 3, b"")


def test_too_large_is_refused_before_decoding():
    side = 10_000
    data = bytes(side * side)  # a real 10,000 x 10,000 mono8 buffer (100 MB)
    start = time.perf_counter()
    with pytest.raises(ImageInputError, match="too large: 10000x10000 = 100000000 pixels"):
        decode_raw("mono8", side, side, side, data)
    assert time.perf_counter() - start < 0.05, "the size check must come before any pixel work"
    # the size is checked before the buffer: a header claiming 10,000 x 10,000 fails the same way
    with pytest.raises(ImageInputError, match="too large"):
        decode_raw("rgb8", side, side, side * 3, bytes(30))
    assert DEFAULT_MAX_PIXELS == 4096 * 4096
    decode_raw("mono8", 4, 4, 4, bytes(16), max_pixels=16)
    with pytest.raises(ImageInputError, match="the limit \\(max_pixels\\) is 15"):
        decode_raw("mono8", 4, 4, 4, bytes(16), max_pixels=15)


def test_odd_width_yuv_is_a_clear_error():
    with pytest.raises(ImageInputError, match="cannot convert yuyv image 7x6 to RGB"):
        decode_raw("yuyv", 6, 7, 14, bytes(6 * 14))


# ---- compressed -------------------------------------------------------------------------------------------------
def encode(ext: str, pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


def test_png_is_lossless():
    np.testing.assert_array_equal(decode_compressed("png", encode(".png", RGB[..., ::-1])), RGB)
    grey = RGB[..., 1]
    np.testing.assert_array_equal(decode_compressed("png", encode(".png", grey)), np.dstack([grey] * 3))
    rgba = np.dstack([RGB[..., ::-1], np.full((H, W), 3, np.uint8)])
    np.testing.assert_array_equal(decode_compressed("png", encode(".png", rgba)), RGB)


def test_16bit_png_is_scaled_to_8bit():
    grey = RGB16[..., 0]
    np.testing.assert_array_equal(decode_compressed("png", encode(".png", grey)), np.dstack([to8(grey)] * 3))
    # Pillow reduces 16-bit colour PNGs itself (high byte): within one level of floor(v * 255 / 65535)
    out = decode_compressed("png", encode(".png", RGB16[..., ::-1]))
    assert np.abs(out.astype(int) - to8(RGB16)).max() <= 1


def test_jpeg_matches_an_independent_decoder():
    yy, xx = np.mgrid[0:48, 0:64]
    scene = np.dstack([xx * 4, yy * 5, 255 - xx * 4]).astype(np.uint8)
    data = encode(".jpg", scene[..., ::-1])
    out = decode_compressed("jpeg", data)
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - reference).max() <= 2  # two libjpeg builds may differ by rounding
    assert np.abs(out.astype(int) - scene).mean() < 3


@pytest.mark.parametrize("keep", ["header", "half", "all but the end marker"])
def test_truncated_jpeg(keep):
    data = encode(".jpg", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    short = {"header": data[:10], "half": data[:len(data) // 2], "all but the end marker": data[:-2]}[keep]
    with pytest.raises(ImageInputError, match=f"cannot decode compressed image \\(format 'jpeg', {len(short)} bytes\\)"):
        decode_compressed("jpeg", short)


@pytest.mark.parametrize("data, message", [
    (b"", "has no data"),
    (b"definitely not an image", "cannot decode compressed image"),
])
def test_undecodable_compressed_data(data, message):
    with pytest.raises(ImageInputError, match=message):
        decode_compressed("jpeg", data)


def test_compressed_depth_is_refused():
    with pytest.raises(ImageInputError, match="is a depth image"):
        decode_compressed("16UC1; compressedDepth png", encode(".png", RGB16[..., 0]))


def test_huge_compressed_image_is_refused_from_its_header():
    data = encode(".png", np.zeros((10_000, 10_000), np.uint8))  # ~100 kB of PNG for a 100 MP image
    assert len(data) < 1_000_000
    start = time.perf_counter()
    with pytest.raises(ImageInputError, match="too large: 10000x10000"):
        decode_compressed("png", data)
    assert time.perf_counter() - start < 0.1, "refused from the header, without decoding"


def test_decode_image_message_dispatches_on_duck_type():
    from types import SimpleNamespace

    compressed = SimpleNamespace(format="png", data=encode(".png", RGB[..., ::-1]))
    np.testing.assert_array_equal(decode_image_message(compressed), RGB)
    image = SimpleNamespace(encoding="bgr8", height=H, width=W, step=W * 3, is_bigendian=0,
                            data=RGB[..., ::-1].tobytes())
    np.testing.assert_array_equal(decode_image_message(image), RGB)


def test_rclpy_messages_decode():
    from sensor_msgs.msg import CompressedImage, Image

    msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=RGB.tobytes())
    np.testing.assert_array_equal(decode_image_message(msg), RGB)
    msg = CompressedImage(format="png", data=encode(".png", RGB[..., ::-1]))
    np.testing.assert_array_equal(decode_image_message(msg), RGB)


# ---- the real rosbag2 files ---------------------------------------------------------------------------------
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "stereo_msgs/msg/DisparityImage")


def read_images(bag):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = []
    with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
        connections = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        for con, _, data in reader.messages(connections=connections):
            msg = reader.deserialize(data, con.msgtype)
            out.append((con.topic, msg.image if con.msgtype.endswith("DisparityImage") else msg))
    return out


def test_real_mono8_bag_decodes(realdata):
    images = read_images(realdata / "rosbags" / "ros2bag_tools_images_mono8_sqlite3")
    assert len(images) == 3
    for _, msg in images:
        np.testing.assert_array_equal(decode_image_message(msg), np.dstack([[[0, 128], [128, 255]]] * 3))


@pytest.mark.parametrize("bag", ["rosbags_rs_test_bag_sqlite3", "rosbags_rs_test_bag_mcap"])
def test_real_malformed_bags_give_clear_errors(realdata, bag):
    images = read_images(realdata / "rosbags" / bag)
    expected = {
        "/test/sensor_msgs/image": "rgb8 image 640x480: data has 30 bytes, but step x height = 1920 x 480 = 921600",
        "/test/sensor_msgs/compressed_image": "cannot decode compressed image (format 'jpeg', 10 bytes)",
        "/test/stereo_msgs/disparity_image": "unsupported image encoding '32FC1'",
    }
    assert sorted({t for t, _ in images}) == sorted(expected) and len(images) == 6
    for topic, msg in images:
        with pytest.raises(ImageInputError) as err:
            decode_image_message(msg)
        assert expected[topic] in str(err.value), str(err.value)

"""The hostile-input catalogue against a running node: one node process with three cameras (front and side raw
sensor_msgs/Image, rear CompressedImage PNG), attacked with bad images, instructions, parameters and lifecycle
transitions. Every case asserts that the error names the problem (log line, service message or parameter reason),
and then that all three cameras still serve: a good frame on each gets its result.

The hostile files handed to the CLIs (checkpoints, bags, ground truth, training state) are
tests/test_hostile_files.py.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from model_fixtures import tiny_dir
from node_helpers import Client, active_node, frames, png_image_msg, reported, rgb_image_msg

CAMERAS = {"front": False, "rear": True, "side": False}
NODE_PARAMS = {"cameras": list(CAMERAS), "rear.compressed": True, "score_threshold": 0.2, "keyframe_interval": 3,
               "num_threads": 1, "diagnostics_period": 0.5}
GOOD = {cam: frames(1, 40, 48, seed=k)[0] for k, cam in enumerate(CAMERAS)}


@pytest.fixture(scope="module")
def node():
    with active_node(dict(NODE_PARAMS, checkpoint=str(tiny_dir()))) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(node):
    c = Client(CAMERAS)
    assert c.spin_until(lambda: all(p.get_subscription_count() > 0 for p in c.image_pubs.values()), 20)
    yield c
    c.close()


def instruct(client: Client, **fields):
    from instructsam_ros.msg import Instruction
    from instructsam_ros.srv import SetInstruction
    return client.call(client.set_instruction, SetInstruction.Request(instruction=Instruction(**fields)))


def good_frame(camera: str, frame_id: str):
    return (png_image_msg if CAMERAS[camera] else rgb_image_msg)(GOOD[camera], frame_id)


def serves(client: Client, camera: str, frame_id: str) -> bool:
    results = client.results[camera]
    start = len(results)
    client.image_pubs[camera].publish(good_frame(camera, frame_id))
    return client.spin_until(lambda: any(r.header.frame_id == frame_id for r in results[start:]), 20)


# ---- the attacks ------------------------------------------------------------------------------------------
def _raw(encoding, height, width, step, data):
    from sensor_msgs.msg import Image
    return Image(encoding=encoding, height=height, width=width, step=step, data=data)


def _compressed(fmt, data):
    from sensor_msgs.msg import CompressedImage
    return CompressedImage(format=fmt, data=data)


def _encoded(ext: str, image: np.ndarray) -> bytes:
    import cv2
    return cv2.imencode(ext, np.ascontiguousarray(image))[1].tobytes()


def image(camera: str, make: Callable):
    def attack(client: Client) -> None:
        client.image_pubs[camera].publish(make())
    return attack


def instruction_topic(**fields):
    def attack(client: Client) -> None:
        from instructsam_ros.msg import Instruction
        client.instruction_pub.publish(Instruction(**fields))
    return attack


def raw_instruction(text_bytes: bytes, field: str = "text"):
    """A serialised Instruction whose `field` holds `text_bytes` as sent on the wire (rclpy publishes bytes as they
    are): bytes that are not UTF-8, or an embedded NUL that rclpy's own decoding would silently cut at."""
    def attack(client: Client) -> None:
        from rclpy.serialization import serialize_message
        from instructsam_ros.msg import Instruction
        placeholder = "X" * len(text_bytes)
        fields = dict(text="the red circle", camera="front")
        fields[field] = placeholder
        raw = serialize_message(Instruction(**fields))
        client.instruction_pub.publish(raw.replace(placeholder.encode(), text_bytes, 1))
    return attack


def service(**fields):
    def attack(client: Client) -> str:
        res = instruct(client, **fields)
        assert not res.success and res.id == "", res.message
        return res.message
    return attack


def parameter(name, value):
    def attack(client: Client) -> str:
        [result] = client.set_params(**{name: value})
        assert not result.successful, f"{name}={value!r} was accepted"
        return result.reason
    return attack


def transition(transition_id: int):
    def attack(client: Client) -> None:
        assert not client.transition(transition_id), "an out-of-order transition succeeded"
    return attack


@dataclass
class Case:
    attack: Callable  # returns the error text (service, parameter) or None (then the node's log is searched)
    expected: str


LATIN1 = "tasse à café".encode("latin-1")
CATALOGUE = {
    # images
    "unknown encoding": Case(image("front", lambda: _raw("rgb99", 4, 4, 12, bytes(48))),
                             "unsupported image encoding 'rgb99'"),
    "float encoding": Case(image("front", lambda: _raw("32FC1", 40, 48, 192, bytes(40 * 192))),
                           "unsupported image encoding '32FC1'"),
    "short buffer": Case(image("front", lambda: _raw("rgb8", 480, 640, 1920, bytes(30))),
                         "data has 30 bytes, but step x height = 1920 x 480 = 921600"),
    "step smaller than a row": Case(image("side", lambda: _raw("rgb8", 4, 8, 10, bytes(40))),
                                    "step 10 is smaller than width x bytes per pixel = 8 x 3 = 24"),
    "zero size": Case(image("front", lambda: _raw("rgb8", 0, 0, 0, b"")), "zero size (0x0 pixels)"),
    "absurd size raw": Case(image("front", lambda: _raw("mono8", 100_000, 100_000, 100_000, bytes(16))),
                            "too large: 100000x100000"),
    "odd-width yuv422": Case(image("side", lambda: _raw("yuv422", 4, 5, 10, bytes(40))), "yuv422"),
    "absurd size png": Case(image("rear", lambda: _compressed("png", _encoded(".png", np.zeros((10_000, 10_000),
                                                                                                np.uint8)))),
                            "too large: 10000x10000"),
    "truncated png": Case(image("rear", lambda: _compressed("png", _encoded(".png", GOOD["rear"])[:60])),
                          "cannot decode compressed image (format 'png', 60 bytes)"),
    "truncated jpeg": Case(image("rear", lambda: _compressed("jpeg", _encoded(".jpg", GOOD["rear"])[:200])),
                           "cannot decode compressed image (format 'jpeg', 200 bytes)"),
    "garbage compressed": Case(image("rear", lambda: _compressed("png", b"definitely not an image")),
                               "cannot decode compressed image (format 'png', 23 bytes)"),
    "empty compressed": Case(image("rear", lambda: _compressed("jpeg", b"")), "compressed image ('jpeg') has no data"),
    "compressed depth": Case(image("rear", lambda: _compressed("16UC1; compressedDepth png",
                                                               _encoded(".png", np.zeros((8, 8), np.uint16)))),
                             "is a depth image"),
    # instructions
    "1 MB instruction": Case(instruction_topic(text="x" * 1_000_000, camera="front"),
                             "instruction is 1000000 characters long; the limit is 2000"),
    "invalid UTF-8 text": Case(raw_instruction(LATIN1), "~/instruction rejected: its bytes are not valid UTF-8"),
    "invalid UTF-8 id": Case(raw_instruction(LATIN1, field="id"),
                             "~/instruction rejected: its bytes are not valid UTF-8"),
    "NUL in text": Case(raw_instruction(b"the red\x00 circle"), "text contains a NUL character at position 7"),
    "NUL in id": Case(raw_instruction(b"a\x00b", field="id"), "id contains a NUL character at position 1"),
    "10000-character id": Case(service(text="a mug", camera="front", id="i" * 10_000),
                               "id is 10000 characters long; the limit is 256"),
    "unknown camera": Case(service(text="a mug", camera="kitchen"),
                           "unknown camera 'kitchen'; known cameras: ['front', 'rear', 'side']"),
    "unknown task": Case(instruction_topic(text="a mug", camera="side", task="dance"), "unknown task 'dance'"),
    "score_threshold 5": Case(service(text="a mug", camera="front", score_threshold=5.0),
                              "score_threshold must be a finite number in [-1, 1]"),
    "score_threshold inf": Case(service(text="a mug", camera="front", score_threshold=math.inf),
                                "score_threshold must be a finite number in [-1, 1] (< 0: the node's default), "
                                "got inf"),
    "score_threshold nan": Case(service(text="a mug", camera="front", score_threshold=math.nan),
                                "score_threshold must be a finite number in [-1, 1] (< 0: the node's default), "
                                "got nan"),
    "max_instances 5000": Case(service(text="a mug", camera="front", max_instances=5000),
                               "max_instances must be an integer in [0, 1000]"),
    "too many tokens": Case(service(text="the small red disk next to the green square " * 20, camera="front"),
                            "(max_instruction_tokens)"),
    # parameters
    "score_threshold param 5": Case(parameter("score_threshold", 5.0), "score_threshold"),
    "mask_threshold param nan": Case(parameter("mask_threshold", math.nan), "mask_threshold"),
    "keyframe_interval -1": Case(parameter("keyframe_interval", -1), "keyframe_interval"),
    "dtype float8": Case(parameter("dtype", "float8"), "dtype must be one of"),
    "checkpoint while active": Case(parameter("checkpoint", "/elsewhere"), "deactivate the node first"),
    "cameras while configured": Case(parameter("cameras", ["a", "b"]), "clean up the node first"),
    "wrong parameter type": Case(parameter("keyframe_interval", "ten"), "Wrong parameter type"),
    # lifecycle transitions out of order (the node is active)
    "configure while active": Case(transition(1), "Unable to start transition 1 from current state (3, 'active')"),
    "activate while active": Case(transition(3), "Unable to start transition 3 from current state (3, 'active')"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_attack_is_refused_naming_the_problem_and_every_camera_still_serves(client, node, case):
    entry = CATALOGUE[case]
    for cam in CAMERAS:  # each case starts from the same instructions, so one failure cannot cascade
        assert instruct(client, text="the red circle", camera=cam, id=f"base-{cam}").success
    mark, diag_mark = node.mark(), len(client.diagnostics)
    said = entry.attack(client)
    if said is None:  # in the log, or (when the camera's error lines are rate-limited) in its diagnostics
        assert reported(client, node, entry.expected, mark, diag_mark), f"{case}: {node.output(mark)[-2000:]}"
    else:
        assert entry.expected in said, f"{case}: {said}"
    assert node.proc.poll() is None, f"{case}: the node exited"
    for cam in CAMERAS:
        assert serves(client, cam, f"after-{case}-{cam}"), f"{case}: camera {cam} no longer serves"
    for cam in CAMERAS:  # the cameras' instructions survived every refused one
        assert client.results[cam][-1].instruction_id == f"base-{cam}", f"{case}: {cam}'s instruction changed"


def test_the_catalogue_is_at_least_thirty_cases():
    assert len(CATALOGUE) >= 30


def test_garbage_flood_on_one_camera_does_not_flood_the_log_or_starve_the_others(client, node):
    """Varied garbage at a high rate on one camera: the others keep serving, and that camera's error lines are
    rate-limited whatever their text (before: every change of text was a new line)."""
    import time

    from instructsam_ros.node import LOG_BURST, LOG_INTERVAL_SECONDS

    mark = node.mark()
    bad = [_raw("rgb99", 4, 4, 12, bytes(48)), _raw("rgb8", 480, 640, 1920, bytes(30))]
    served = k = 0
    start = time.monotonic()
    # At least 100 bad frames, and for longer than one logging window: the earlier cases may have used up the
    # current window's lines, so only a window that opens during the flood is sure to log.
    while k < 100 or time.monotonic() - start < LOG_INTERVAL_SECONDS + 0.5:
        client.image_pubs["front"].publish(bad[k % 2])
        client.executor.spin_once(timeout_sec=0.02)
        if k % 25 == 0 and k <= 75:
            served += all(serves(client, cam, f"flood-{k}-{cam}") for cam in ("rear", "side"))
        k += 1
    elapsed = time.monotonic() - start
    assert served == 4, "the other cameras stopped serving during the flood"

    def front_lines() -> list[str]:
        return [line for line in node.lines[mark:] if "[front]" in line and "bad image" in line]
    client.spin_until(lambda: bool(front_lines()), 3.0)  # the log reader may lag the last frames
    lines = front_lines()
    windows = math.ceil(elapsed / LOG_INTERVAL_SECONDS) + 1
    assert 1 <= len(lines) <= LOG_BURST * windows, f"{len(lines)} error lines for {k} bad frames in {elapsed:.1f} s"
    status = client.diagnostic(": front", lambda v: int(v["bad_frames"]) >= 100)
    assert "bad image" in status["last_error"]

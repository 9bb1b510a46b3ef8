"""Full-size frames from a camera in another process reach the node under the shipped defaults
(image_qos.reliability auto: the node subscribes with its publishers' reliability), and a camera topic that has
publishers but delivers no frames is a diagnostics WARN that says so (a best-effort publisher of large frames
under Fast DDS's default transports). config/fastdds_large_images.xml makes such a publisher's frames arrive.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from model_fixtures import tiny_dir
from node_helpers import REPO, Client, active_node

SIZES = {"vga": (640, 480), "hd": (1280, 720)}
FRAMES, RATE = 20, 10.0
PROFILE = REPO / "config" / "fastdds_large_images.xml"


@pytest.fixture(scope="module")
def node():
    with active_node({"checkpoint": str(tiny_dir()), "cameras": list(SIZES), "num_threads": 1,
                      "diagnostics_period": 0.5}) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(node):
    c = Client({})
    yield c
    c.close()


def publish(camera: str, reliability: str, profile: bool = False) -> None:
    width, height = SIZES[camera]
    env = dict(os.environ)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "image_publisher.py"), f"/{camera}/image_raw",
                           str(width), str(height), reliability, str(FRAMES), str(RATE)],
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and f"published {FRAMES}" in done.stdout, done.stderr[-2000:]


def received(client, camera: str) -> int:
    since = len(client.diagnostics)
    return int(client.diagnostic(f": {camera}", since=since, timeout=5)["received"])


@pytest.mark.parametrize("camera", list(SIZES))
def test_full_size_frames_from_a_reliable_camera_arrive(node, client, camera):
    """A standard driver (reliable QoS) at 640x480 and 1280x720: with the shipped default every frame arrives
    (before: best effort, 0 of the 1280x720 frames)."""
    before = received(client, camera)
    since = len(client.diagnostics)
    publish(camera, "reliable")
    assert client.spin_until(lambda: received(client, camera) - before >= FRAMES - 1, 10), \
        f"{camera}: {received(client, camera) - before} of {FRAMES} frames arrived\n{node.output()[-2000:]}"
    # while the camera streamed, the node's subscription followed it (and went back to best effort after)
    client.diagnostic(f": {camera}", lambda v: v["reliability"] == "reliable", since=since, timeout=1)


@pytest.mark.parametrize("camera", list(SIZES))
def test_a_best_effort_camera_with_the_large_images_profile_arrives(node, client, camera):
    before = received(client, camera)
    publish(camera, "best_effort", profile=True)
    assert client.spin_until(lambda: received(client, camera) - before >= FRAMES - 1, 10), \
        f"{camera}: {received(client, camera) - before} of {FRAMES} frames arrived"


def test_publishers_but_no_frames_is_a_warning_that_says_why(node, client):
    """A best-effort publisher of 1280x720 frames under Fast DDS's default transports: nothing arrives, and the
    camera's diagnostics warn naming the topic and the publishers while it streams."""
    import threading

    camera = "hd"
    before = received(client, camera)
    warnings: list[dict] = []
    feeder = threading.Thread(target=publish, args=(camera, "best_effort"))
    since = len(client.diagnostics)
    feeder.start()
    try:
        warn = client.diagnostic(f": {camera}", lambda v: v["_level"] == 1 and "no frame arrived" in v["_message"],
                                 since=since, timeout=15)
        warnings.append(warn)
    finally:
        feeder.join()
    assert "publisher(s) on /hd/image_raw" in warnings[0]["_message"], warnings[0]
    assert "best_effort" in warnings[0]["_message"]
    assert received(client, camera) - before < FRAMES // 2  # the frames really were lost: the warning is earned

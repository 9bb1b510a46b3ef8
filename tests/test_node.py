"""instructsam_node as a separate process, started exactly as the launch file starts it, over real ROS 2
(rclpy, the colcon-generated messages): results equal the frame pipeline run directly on the same frames,
bad input is reported and the next frame is still processed, and two cameras never mix.

One node process serves the whole module: camera "front" (sensor_msgs/Image) and camera "rear"
(sensor_msgs/CompressedImage, PNG).
"""
from __future__ import annotations

import numpy as np
import pytest

from instructsam_ros.conversions import decode_masks
from model_fixtures import load_tiny, tiny_dir
from node_helpers import Client, active_node, frames, png_image_msg, reported, rgb_image_msg

NODE_PARAMS = {
    "cameras": ["front", "rear"], "rear.compressed": True, "publish_overlay": True,
    "score_threshold": 0.2, "keyframe_interval": 3, "num_threads": 1, "diagnostics_period": 0.5,
}
FRONT = frames(6, 48, 64, seed=1)
REAR = frames(6, 40, 56, seed=2)
THRESHOLDS = ("score_threshold", "mask_threshold", "nms_iou", "max_instances")


@pytest.fixture(scope="module")
def node():
    with active_node(dict(NODE_PARAMS, checkpoint=str(tiny_dir()))) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(node):
    c = Client({"front": False, "rear": True})
    assert c.spin_until(lambda: all(p.get_subscription_count() > 0 for p in c.image_pubs.values()), 20), \
        "the node did not subscribe to the cameras"
    yield c
    c.close()


def node_settings() -> dict:
    """The pipeline settings the node runs with: config/instructsam.yaml, then the -p overrides."""
    import yaml
    from instructsam_ros.parameters import PIPELINE_SETTINGS
    from node_helpers import PARAMS_FILE

    params = dict(yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"], **NODE_PARAMS)
    return {name: params[name] for name in PIPELINE_SETTINGS}


def predict(model, image, text):
    """The model's own post-processed prediction, with the node's thresholds."""
    settings = node_settings()
    return model.predict(image, [text], **{k: settings[k] for k in THRESHOLDS})[0]


def reference_pipeline():
    """The frame pipeline the node runs, in this process, with the node's settings."""
    from instructsam.pipeline.frame_pipeline import FramePipeline, PipelineSettings
    return FramePipeline(load_tiny(), ["front", "rear"], PipelineSettings(**node_settings()))


def send(client: Client, camera: str, msg, timeout: float = 20.0):
    """Publish one frame and wait for its result (matched by frame_id)."""
    results = client.results[camera]
    start = len(results)
    client.image_pubs[camera].publish(msg)
    got = client.spin_until(lambda: any(r.header.frame_id == msg.header.frame_id for r in results[start:]), timeout)
    assert got, f"no result on {camera} for frame {msg.header.frame_id!r}"
    return next(r for r in results[start:] if r.header.frame_id == msg.header.frame_id)


def set_instruction(client: Client, **fields):
    from instructsam_ros.msg import Instruction
    from instructsam_ros.srv import SetInstruction
    return client.call(client.set_instruction, SetInstruction.Request(instruction=Instruction(**fields)))


def assert_same_instances(msg, expected, id_map: dict[str, str]) -> None:
    """An InstanceMaskArray equals a FrameResult: states, scores, decoded masks, and ids up to one consistent
    renaming over the whole sequence (`id_map`, node id -> reference id; ids count on across earlier tests)."""
    from instructsam_ros.conversions import STATE_NAMES
    assert len(msg.instances) == len(expected.instances)
    for got, want in zip(msg.instances, expected.instances):
        assert id_map.setdefault(got.id, str(want.id)) == str(want.id), "track ids are stable"
    assert len(set(id_map.values())) == len(id_map)
    assert [STATE_NAMES[i.state] for i in msg.instances] == [i.state for i in expected.instances]
    np.testing.assert_allclose([i.score for i in msg.instances], [i.score for i in expected.instances], rtol=1e-5)
    want = (np.stack([i.mask for i in expected.instances]) if expected.instances
            else np.zeros((0, expected.height, expected.width), bool))
    np.testing.assert_array_equal(decode_masks(msg), want)


def mask_multiset(masks: np.ndarray) -> list[bytes]:
    return sorted(np.packbits(m).tobytes() for m in masks)


# ---- results equal the runtime library's output -------------------------------------------------------------
def test_results_equal_the_pipeline_run_directly_on_the_same_frames(client):
    res = set_instruction(client, id="red-1", text="the red circle", camera="front")
    assert res.success and res.id == "red-1", res.message
    reference = reference_pipeline()
    reference.instructions.set("the red circle", "front", "red-1")
    id_map: dict[str, str] = {}
    indices, keyframes, instances = [], [], 0
    for t, image in enumerate(FRONT):
        msg = send(client, "front", rgb_image_msg(image, f"front-{t}", stamp=(100 + t, 5)))
        reference.submit("front", image)
        expected = reference.step("front")
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (100 + t, 5), "header copied from the image"
        assert (msg.camera, msg.height, msg.width) == ("front", 48, 64)
        assert (msg.instruction_id, msg.instruction) == ("red-1", "the red circle")
        assert msg.keyframe == expected.keyframe
        assert_same_instances(msg, expected, id_map)
        assert msg.latency_ms >= msg.processing_ms > 0
        indices.append(msg.frame_index)
        keyframes.append(msg.keyframe)
        instances += len(msg.instances)
    assert indices == list(range(indices[0], indices[0] + len(FRONT)))
    assert keyframes == [True, False, False, True, False, False], "keyframe_interval 3: detector, then tracker"
    assert instances, "the comparison should cover real masks, not only empty sets"


def test_keyframes_equal_the_models_direct_prediction(client):
    """On the first frame of an instruction the instance set is the model's own post-processed prediction
    (after the pipeline's mask NMS), with ids, all new."""
    from instructsam.pipeline.tracker_session import mask_nms
    assert set_instruction(client, id="kf", text="every shape", camera="front").success
    msg = send(client, "front", rgb_image_msg(FRONT[4], "kf-0"))
    assert msg.keyframe
    prediction = predict(load_tiny(), FRONT[4], "every shape")
    keep = mask_nms(prediction.masks, prediction.scores, node_settings()["nms_iou"])
    assert len(keep) >= 1 and all(i.state == i.STATE_NEW for i in msg.instances)
    assert mask_multiset(decode_masks(msg)) == mask_multiset(prediction.masks[keep])
    np.testing.assert_allclose(sorted(i.score for i in msg.instances), sorted(prediction.scores[keep]), rtol=1e-5)


def test_overlay_is_published_for_each_result(client):
    set_instruction(client, id="ov", text="the red circle", camera="front")
    start = len(client.overlays["front"])
    msg = send(client, "front", rgb_image_msg(FRONT[0], "overlay-0"))
    assert client.spin_until(lambda: any(o.header.frame_id == "overlay-0" for o in client.overlays["front"][start:]))
    overlay = next(o for o in client.overlays["front"][start:] if o.header.frame_id == "overlay-0")
    assert (overlay.encoding, overlay.height, overlay.width, overlay.step) == ("rgb8", 48, 64, 64 * 3)
    drawn = np.frombuffer(bytes(overlay.data), np.uint8).reshape(48, 64, 3)
    masks = decode_masks(msg)
    if len(masks):
        assert (drawn[masks.any(0)] != FRONT[0][masks.any(0)]).any(), "masks are drawn"
    assert (drawn != FRONT[0]).any()


# ---- two cameras ---------------------------------------------------------------------------------------------
def test_two_cameras_with_different_instructions_never_mix(client):
    assert set_instruction(client, id="F", text="the red circle", camera="front").success
    assert set_instruction(client, id="R", text="all blue squares", camera="rear").success
    front_start, rear_start = len(client.results["front"]), len(client.results["rear"])
    sent = {"front": {}, "rear": {}}
    for t in range(len(FRONT)):  # interleaved, without waiting: the node may drop frames, never mix them
        client.image_pubs["front"].publish(rgb_image_msg(FRONT[t], f"F{t}"))
        client.image_pubs["rear"].publish(png_image_msg(REAR[t], f"R{t}"))
        sent["front"][f"F{t}"], sent["rear"][f"R{t}"] = FRONT[t], REAR[t]
        client.spin_until(lambda: False, 0.05)
    client.spin_until(lambda: any(r.header.frame_id == "F5" for r in client.results["front"][front_start:])
                      and any(r.header.frame_id == "R5" for r in client.results["rear"][rear_start:]), 30)
    front, rear = client.results["front"][front_start:], client.results["rear"][rear_start:]
    assert front and rear
    for results, cam, ins_id, text, size in ((front, "front", "F", "the red circle", (48, 64)),
                                             (rear, "rear", "R", "all blue squares", (40, 56))):
        for r in results:
            assert r.camera == cam and r.header.frame_id in sent[cam]
            assert (r.instruction_id, r.instruction) == (ins_id, text)
            assert (r.height, r.width) == size and all((i.mask_height, i.mask_width) == size for i in r.instances)
    # and the first rear result is the model's own answer for that rear frame under the rear instruction
    from instructsam.pipeline.tracker_session import mask_nms
    first = rear[0]
    assert first.keyframe
    prediction = predict(load_tiny(), sent["rear"][first.header.frame_id], "all blue squares")
    keep = mask_nms(prediction.masks, prediction.scores, node_settings()["nms_iou"])
    assert mask_multiset(decode_masks(first)) == mask_multiset(prediction.masks[keep])


def test_clearing_one_camera_stops_only_its_output(client, node):
    assert set_instruction(client, id="F2", text="the red circle", camera="front").success
    assert set_instruction(client, id="R2", text="all blue squares", camera="rear").success
    res = set_instruction(client, text="", camera="rear")
    assert res.success and "cleared" in res.message
    rear_start = len(client.results["rear"])
    client.image_pubs["rear"].publish(png_image_msg(REAR[0], "after-clear"))
    assert send(client, "front", rgb_image_msg(FRONT[0], "front-still")).instruction_id == "F2"
    client.spin_until(lambda: False, 1.0)
    assert not client.results["rear"][rear_start:], "a cleared camera publishes nothing"
    # a plain std_msgs/String instruction applies to every camera, and the rear answers again
    from std_msgs.msg import String
    mark = node.mark()
    client.text_pub.publish(String(data="anything round"))
    assert node.wait_for("for every camera (from ~/instruction_text)", since=mark), node.output(mark)
    rear = send(client, "rear", png_image_msg(REAR[1], "rear-again"))
    front = send(client, "front", rgb_image_msg(FRONT[1], "front-again"))
    assert rear.instruction == front.instruction == "anything round" and rear.instruction_id == front.instruction_id


# ---- bad input: a clear error, then the next valid frame is processed ----------------------------------------
BAD_IMAGES = {
    # camera, message factory, expected log text
    "32FC1": ("front", lambda: _raw("32FC1", 48, 64, 64 * 4, bytes(48 * 64 * 4)), "unsupported image encoding '32FC1'"),
    "short data": ("front", lambda: _raw("rgb8", 480, 640, 1920, bytes(30)),
                   "data has 30 bytes, but step x height = 1920 x 480 = 921600"),
    "0x0": ("front", lambda: _raw("rgb8", 0, 0, 0, b""), "zero size (0x0 pixels)"),
    "10000x10000 raw header": ("front", lambda: _raw("mono8", 10_000, 10_000, 10_000, bytes(16)),
                               "too large: 10000x10000"),
    "10000x10000 png": ("rear", lambda: _png_of_zeros(10_000, 10_000), "too large: 10000x10000"),
    "truncated jpeg": ("rear", lambda: _compressed("jpeg", _jpeg(REAR[0])[:200]),
                       "cannot decode compressed image (format 'jpeg', 200 bytes)"),
}


def _raw(encoding, height, width, step, data):
    from sensor_msgs.msg import Image
    return Image(encoding=encoding, height=height, width=width, step=step, data=data)


def _compressed(fmt, data):
    from sensor_msgs.msg import CompressedImage
    return CompressedImage(format=fmt, data=data)


def _jpeg(image):
    import cv2
    return cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()


def _png_of_zeros(height, width):
    import cv2
    return _compressed("png", cv2.imencode(".png", np.zeros((height, width), np.uint8))[1].tobytes())


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_reported_and_the_next_frame_is_processed(client, node, case):
    camera, make, expected = BAD_IMAGES[case]
    assert set_instruction(client, id=f"bad-{camera}", text="the red circle", camera=camera).success
    mark, diag_mark = node.mark(), len(client.diagnostics)
    bad = make()
    bad.header.frame_id = f"bad-{case}"
    client.image_pubs[camera].publish(bad)
    assert reported(client, node, expected, mark, diag_mark), f"no clear error for {case}:\n{node.output(mark)}"
    status = client.diagnostic(f": {camera}", lambda v: expected in v["last_error"], since=diag_mark)
    assert int(status["bad_frames"]) >= 1 and status["_level"] == 1  # WARN
    good = FRONT[0] if camera == "front" else REAR[0]
    make_good = rgb_image_msg if camera == "front" else png_image_msg
    result = send(client, camera, make_good(good, f"good-after-{case}"))
    assert result.instruction_id == f"bad-{camera}"
    assert f"bad-{case}" not in [r.header.frame_id for r in client.results[camera]]


def test_real_bag_messages_are_reported_and_the_next_frame_is_processed(client, node, realdata):
    """The malformed messages of the real rosbag2 file, published as they are in the bag."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import CompressedImage, Image

    typestore = get_typestore(Stores.LATEST)
    bag = realdata / "rosbags" / "rosbags_rs_test_bag_mcap"
    wanted = {"/test/sensor_msgs/image": ("front", "data has 30 bytes"),
              "/test/sensor_msgs/compressed_image": ("rear", "cannot decode compressed image (format 'jpeg', 10 bytes)"),
              "/test/stereo_msgs/disparity_image": ("front", "unsupported image encoding '32FC1'")}
    seen = set()
    with AnyReader([bag], default_typestore=typestore) as reader:
        connections = [c for c in reader.connections if c.topic in wanted]
        for con, _, data in reader.messages(connections=connections):
            if con.topic in seen:
                continue
            seen.add(con.topic)
            msg = reader.deserialize(data, con.msgtype)
            camera, expected = wanted[con.topic]
            if con.msgtype.endswith("DisparityImage"):
                msg = msg.image
            ros_msg = (CompressedImage(format=msg.format, data=bytes(msg.data)) if camera == "rear" else
                       Image(height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step,
                             is_bigendian=msg.is_bigendian, data=bytes(msg.data)))
            ros_msg.header.frame_id = msg.header.frame_id
            assert set_instruction(client, id="bag", text="the red circle", camera=camera).success
            mark, diag_mark = node.mark(), len(client.diagnostics)
            client.image_pubs[camera].publish(ros_msg)
            assert reported(client, node, expected, mark, diag_mark), f"{con.topic}:\n{node.output(mark)}"
            good = rgb_image_msg(FRONT[1], "after-bag") if camera == "front" else png_image_msg(REAR[1], "after-bag")
            assert send(client, camera, good).instruction_id == "bag"
    assert seen == set(wanted)


def non_utf8_instruction() -> bytes:
    """A serialised Instruction for camera 'front' whose text bytes are not UTF-8 (a planner bug, or a
    latin-1 string). rclpy cannot build such a message from Python, so patch the CDR bytes."""
    from rclpy.serialization import serialize_message
    from instructsam_ros.msg import Instruction
    raw = serialize_message(Instruction(id="latin1", text="XXXXXXXXXXXX", camera="front"))
    bad = "tasse à café".encode("latin-1")  # 12 bytes, like the placeholder: the length prefix stays valid
    assert len(bad) == 12 and raw.count(b"XXXXXXXXXXXX") == 1
    return raw.replace(b"XXXXXXXXXXXX", bad)


def non_utf8_string() -> bytes:
    """A serialised std_msgs/String whose bytes are not UTF-8."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String
    return serialize_message(String(data="XXXXXXXXXXXX")).replace(b"XXXXXXXXXXXX", "tasse à café".encode("latin-1"))


@pytest.mark.parametrize("case", ["100000 characters", "non-UTF-8", "non-UTF-8 String", "unknown camera",
                                  "unknown task"])
def test_bad_instructions_on_the_topic_are_logged_and_the_current_one_stays(client, node, case):
    from instructsam_ros.msg import Instruction
    assert set_instruction(client, id="keep", text="the red circle", camera="front").success
    mark, diag_mark = node.mark(), len(client.diagnostics)
    if case == "100000 characters":
        client.instruction_pub.publish(Instruction(id="long", text="x" * 100_000, camera="front"))
        expected = "instruction is 100000 characters long; the limit is 2000"
    elif case == "non-UTF-8":
        client.instruction_pub.publish(non_utf8_instruction())  # rclpy publishes serialised bytes as they are
        expected = "not valid UTF-8"
    elif case == "non-UTF-8 String":
        client.text_pub.publish(non_utf8_string())
        expected = "instruction from ~/instruction_text rejected: its bytes are not valid UTF-8"
    elif case == "unknown camera":
        client.instruction_pub.publish(Instruction(text="a mug", camera="kitchen"))
        expected = "unknown camera 'kitchen'"
    else:
        client.instruction_pub.publish(Instruction(text="a mug", camera="front", task="dance"))
        expected = "unknown task 'dance'"
    assert reported(client, node, expected, mark, diag_mark), node.output(mark)
    assert reported(client, node, "rejected", mark, diag_mark), node.output(mark)
    assert send(client, "front", rgb_image_msg(FRONT[2], f"after-{case}")).instruction_id == "keep"


@pytest.mark.parametrize("fields, expected", [
    (dict(text="x" * 100_000, camera="front"), "instruction is 100000 characters long; the limit is 2000"),
    (dict(text="a mug", camera="kitchen"), "unknown camera 'kitchen'; known cameras: ['front', 'rear']"),
    # under the character limit but more tokens than the loaded model reads: refused on arrival, not per frame
    (dict(text="the small red disk next to the green square " * 20, camera="front"),
     "more than the limit of 128 (max_instruction_tokens)"),
])
def test_bad_instructions_on_the_service_are_returned(client, fields, expected):
    assert set_instruction(client, id="keep2", text="the red circle", camera="front").success
    res = set_instruction(client, **fields)
    assert not res.success and expected in res.message and res.id == ""
    assert send(client, "front", rgb_image_msg(FRONT[3], f"after-srv-{fields['camera']}")).instruction_id == "keep2"


def test_empty_instruction_clears_and_says_so(client, node):
    from instructsam_ros.msg import Instruction
    mark = node.mark()
    client.instruction_pub.publish(Instruction(text="   ", camera="front"))
    assert node.wait_for("instruction cleared for camera 'front'", since=mark, timeout=10), node.output(mark)
    start = len(client.results["front"])
    client.image_pubs["front"].publish(rgb_image_msg(FRONT[0], "while-cleared"))
    client.spin_until(lambda: False, 1.0)
    assert not client.results["front"][start:]
    assert set_instruction(client, id="back", text="the red circle", camera="front").success
    assert send(client, "front", rgb_image_msg(FRONT[0], "after-empty")).instruction_id == "back"


# ---- runtime parameters and diagnostics ---------------------------------------------------------------------
def test_thresholds_change_at_runtime(client):
    assert set_instruction(client, id="thr", text="the red circle", camera="front").success
    before = send(client, "front", rgb_image_msg(FRONT[0], "thr-before"))
    assert before.instances
    [result] = client.set_params(score_threshold=0.999)
    assert result.successful, result.reason
    # thresholds act on detections: from the next keyframe (keyframe_interval 3) nothing below 0.999 is visible
    after = [send(client, "front", rgb_image_msg(FRONT[0], f"thr-after-{t}")) for t in range(3)]
    keyframe = next(m for m in after if m.keyframe)
    visible = [i for i in keyframe.instances if i.state != i.STATE_LOST]
    assert all(i.score >= 0.999 for i in visible) and len(visible) < len(before.instances)
    [bad] = client.set_params(score_threshold=1.5)
    assert not bad.successful
    [load_time] = client.set_params(checkpoint="/elsewhere")
    assert not load_time.successful and "deactivate" in load_time.reason
    [result] = client.set_params(score_threshold=NODE_PARAMS["score_threshold"])
    assert result.successful


def test_diagnostics_report_rates_latency_device_and_errors(client):
    assert set_instruction(client, id="diag", text="the red circle", camera="front").success
    mark = len(client.diagnostics)
    for t in range(3):
        send(client, "front", rgb_image_msg(FRONT[t], f"diag-{t}"))
    front = client.diagnostic(": front", lambda v: int(v["processed"]) >= 3 and v["instruction_id"] == "diag",
                              since=mark)
    for key in ("input_rate_hz", "processed_rate_hz", "dropped", "latency_p50_ms", "latency_p95_ms", "device",
                "last_error", "bad_frames"):
        assert key in front, key
    assert front["device"] == "cpu (float32)" and float(front["latency_p95_ms"]) >= float(front["latency_p50_ms"]) > 0
    node_status = client.diagnostic(": node", since=mark)
    assert node_status["state"] == "active" and node_status["model"] == str(tiny_dir())


def test_publishing_ten_times_faster_than_processing_for_ten_seconds_drops_stale_frames(client):
    """Frames published 10x faster than the node processes them, for 10 s: the node never works through a backlog
    (every result is for a frame younger than two processing periods when its result arrives) and diagnostics
    count the dropped frames."""
    import time

    assert set_instruction(client, id="flood", text="the red circle", camera="front").success
    warm = [send(client, "front", rgb_image_msg(FRONT[t % len(FRONT)], f"warm-{t}")) for t in range(6)]
    period_s = max(float(np.median([r.processing_ms for r in warm])), 1.0) / 1e3
    results = client.results["front"]
    start_index, mark = len(results), len(client.diagnostics)
    published: dict[str, float] = {}
    received: dict[str, float] = {}
    interval = period_s / 10
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 10.0:
        frame_id = f"flood-{n}"
        client.image_pubs["front"].publish(rgb_image_msg(FRONT[n % len(FRONT)], frame_id))
        published[frame_id] = time.monotonic()
        n += 1
        next_time = t0 + n * interval
        while True:  # receive results while waiting for the next publication time
            client.executor.spin_once(timeout_sec=0)
            for r in results[start_index:]:
                received.setdefault(r.header.frame_id, time.monotonic())
            if time.monotonic() >= next_time:
                break
    def note_arrivals() -> bool:
        for r in results[start_index:]:
            received.setdefault(r.header.frame_id, time.monotonic())
        return False

    client.spin_until(note_arrivals, 2 * period_s + 0.5)  # the frame in progress when publishing stopped
    flood = [r for r in results[start_index:] if r.header.frame_id.startswith("flood-")]
    assert n >= 50 and len(flood) >= 10, (n, len(flood))
    assert len(flood) < n / 3, "the node cannot have processed most frames published 10x faster than it works"
    # a processing period is the time between consecutive results, and periods differ (a keyframe takes several
    # tracked frames' time). The frame of result j was the newest one when its processing began, so it was
    # published during period j-1 at the earliest: younger than the two periods ending at its result. A node
    # working through a queue would return frames older than that, by one period per queued frame.
    arrivals = [received[r.header.frame_id] for r in flood]
    for j in range(2, len(flood)):
        two_periods = arrivals[j] - arrivals[j - 2]
        age = arrivals[j] - published[flood[j].header.frame_id]
        assert age < two_periods + 0.05, (flood[j].header.frame_id, age, two_periods)
    after = len(client.diagnostics)  # a report covering the whole flood
    diag = client.diagnostic(": front", lambda v: v["instruction_id"] == "flood", since=after, timeout=5.0)
    print("diagnostics after the flood:", diag)
    dropped, received_count, processed = int(diag["dropped"]), int(diag["received"]), int(diag["processed"])
    assert dropped >= 5 * len(flood), (dropped, len(flood), n)  # published 10x faster than processed
    assert received_count - processed >= dropped - 1, diag

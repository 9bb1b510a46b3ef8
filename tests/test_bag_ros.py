"""The bag evaluator against real ROS 2 (rclpy, the colcon-generated messages):

- the output bag's InstanceMaskArray bytes deserialise with rclpy into instructsam_ros.msg.InstanceMaskArray, equal
  field by field to what rosbags reads, with the rosidl type hashes recorded in the bag (sqlite3 and mcap);
- live-node equality: a synthetic ground-truth bag replayed by the evaluator scores the same metrics (to 1e-6) as
  the live node fed the same frames and instructions with the same scheduler settings. The node process is started
  as tests/test_node.py starts it and is made to process every frame (the next frame is published only after the
  previous result arrived). This holds for any model: the test uses the shipped checkpoint when it exists
  (checkpoints/instructsam-tiny), else the tiny random-weight one.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bag_helpers import SETTINGS, checkpoint, comparable, replay, synthetic
from instructsam_ros.bags.records import BagRecords, decode_rle, record_from_instance_array
from instructsam_tools.bag_eval.scoring import score, strip_timing


def assert_same_message(rclpy_msg, rosbags_msg, where="msg"):
    """Every field of an rclpy message equals the same field of a rosbags message (recursively)."""
    for name, kind in rclpy_msg.get_fields_and_field_types().items():
        a, b = getattr(rclpy_msg, name), getattr(rosbags_msg, name)
        if kind.startswith("sequence<") and "/" in kind:
            assert len(a) == len(b), f"{where}.{name}"
            for i, (x, y) in enumerate(zip(a, b)):
                assert_same_message(x, y, f"{where}.{name}[{i}]")
        elif "/" in kind:
            assert_same_message(a, b, f"{where}.{name}")
        elif "[" in kind or kind.startswith("sequence"):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{where}.{name}")
        else:
            assert a == b, f"{where}.{name}: {a!r} != {b!r}"


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_output_bag_deserialises_to_the_packages_types(tmp_path, storage):
    from ament_index_python.packages import get_package_share_directory
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import Image

    from instructsam_ros.conversions import decode_masks, make_instance, make_instance_array
    from instructsam_ros.msg import InstanceMaskArray

    made = synthetic(tmp_path, storage=storage, seed=2)[0]
    out = tmp_path / "results"
    records = replay(made, output_bag=str(out), overlay=True)
    by_stamp = {f.stamp_ns: f for f in records.frames}
    share = get_package_share_directory("instructsam_ros")
    hashes = {n: json.loads(open(f"{share}/msg/{n}.json").read())["type_hashes"][0]["hash_string"]
              for n in ("InstanceMaskArray",)}
    seen = 0
    with AnyReader([out]) as reader:  # no typestore given: the bag's own message definitions are used
        assert reader.connections[0].msgtype == "instructsam_ros/msg/InstanceMaskArray"
        assert {c.topic for c in reader.connections} == {"/cam0/instances", "/cam0/overlay"}
        meta = (out / "metadata.yaml").read_text()
        assert hashes["InstanceMaskArray"] in meta, "the bag records rosidl's own type hash"
        for conn, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/cam0/overlay":
                image = deserialize_message(raw, Image)
                assert (image.height, image.width, image.encoding) == (48, 48, "rgb8") and len(image.data) == 48 * 48 * 3
                continue
            assert type(msg).__name__ == "instructsam_ros__msg__InstanceMaskArray"
            node_msg = deserialize_message(raw, InstanceMaskArray)  # what a ROS 2 subscriber gets
            assert_same_message(node_msg, msg)
            record = by_stamp[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec]
            assert timestamp == record.log_time_ns and msg.header.frame_id == "cam0_optical_frame"
            assert (msg.camera, msg.instruction_id, msg.keyframe) == ("cam0", record.instruction_id, record.keyframe)
            assert [(i.id, i.score) for i in node_msg.instances] == [(i.id, i.score) for i in record.instances]
            want = np.stack([decode_rle(i.rle, 48, 48) for i in record.instances]) if record.instances else None
            if want is not None:
                np.testing.assert_array_equal(decode_masks(node_msg), want)
                # and the node's own conversion makes the same message from those masks (CDR padding bytes
                # are unspecified, so the messages are compared, not the bytes)
                again = make_instance_array(node_msg.header, "cam0", 48, 48, msg.instruction_id, msg.instruction,
                                            [make_instance(i.id, i.score, i.state, m)
                                             for i, m in zip(node_msg.instances, want)],
                                            keyframe=msg.keyframe, frame_index=msg.frame_index,
                                            processing_ms=msg.processing_ms, latency_ms=msg.latency_ms)
                assert_same_message(deserialize_message(serialize_message(again), InstanceMaskArray), msg)
            seen += 1
    assert seen == len(records.frames) == 6


# ---- the live node ---------------------------------------------------------------------------------------------
METRICS = ("mAP", "AP50", "AP75", "gIoU", "cIoU", "N-acc", "T-acc", "P@0.5", "mIoU", "oIoU", "J", "F", "J&F", "MOTA",
           "id_switches", "num_gt", "matches", "misses", "false_positives")


def assert_close(a, b, path="summary"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_evaluator_metrics_equal_the_live_nodes(tmp_path):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from instructsam_tools.bag_eval.cli import node_params
    from instructsam_tools.bag_eval.groundtruth import attach, load_ground_truth
    from instructsam_ros.bags.reader import BagSource
    from instructsam_ros.bags.replay import ReplayOptions, replay_bag
    from instructsam_tools.bag_eval.runner import ModelSpec, load_model
    from instructsam_ros.bags.schedule import InstructionSchedule
    from instructsam.pipeline.frame_pipeline import PipelineSettings
    from instructsam_ros.msg import Instruction
    from instructsam_ros.srv import SetInstruction
    from node_helpers import PARAMS_FILE, Client, NodeProcess

    made = synthetic(tmp_path, frames=10, size=48, max_objects=4, seed=7)[0]
    schedule = InstructionSchedule.load(made.schedule)
    gt = load_ground_truth(made.ground_truth)
    ckpt = checkpoint()
    # 0.02: below the top scores of both the random tiny model and the (barely trained) shipped one, so real masks
    # are compared whichever checkpoint() returns
    overrides = dict(SETTINGS, score_threshold=0.02, num_threads=1)

    # the evaluator, with the pipeline settings the node reads from its parameter file and -p overrides
    params = dict(node_params(str(PARAMS_FILE)), **overrides)
    fields = PipelineSettings.__dataclass_fields__
    settings = PipelineSettings(**{k: v for k, v in params.items() if k in fields})
    evaluated = attach(replay_bag(made.bag, load_model(ModelSpec(str(ckpt))), settings,
                                  ReplayOptions(schedule=schedule, progress=False)), gt)

    # the live node on the same frames (the bag's own bytes) and instructions
    node = NodeProcess(dict(overrides, cameras=["cam0"], checkpoint=str(ckpt)))
    client = None
    try:
        assert node.wait_for("active: model", timeout=120), f"the node did not become active:\n{node.output()}"
        client = Client({"cam0": False})
        assert client.spin_until(lambda: client.image_pubs["cam0"].get_subscription_count() > 0, 20)
        results = client.results["cam0"]
        frames = []
        with BagSource(made.bag) as source:
            for index, message in enumerate(source.messages()):
                for entry in [e for e in schedule.entries if e.frame == index]:
                    request = SetInstruction.Request(instruction=Instruction(
                        id=entry.id, text=entry.text, camera=entry.camera, task=entry.task))
                    assert client.call(client.set_instruction, request).success
                image = deserialize_message(message.raw, Image)
                start = len(results)
                client.image_pubs["cam0"].publish(image)
                assert client.spin_until(lambda: len(results) > start, 30), f"no result for frame {index}"
                result = results[start]
                assert (result.header.stamp.sec, result.header.stamp.nanosec) == (image.header.stamp.sec,
                                                                                 image.header.stamp.nanosec)
                frames.append(record_from_instance_array(result, seq=message.seq, topic=message.topic, index=index,
                                                         log_time_ns=message.log_time_ns))
    finally:
        if client is not None:
            client.close()
        code = node.stop()
    assert code == 0, node.output()[-3000:]

    live = BagRecords(**{**evaluated.__dict__, "frames": frames, "skipped": []})
    attach(live, gt)
    assert [f.frame_index for f in live.frames] == list(range(10)), "the node processed every frame"
    assert [f.keyframe for f in live.frames] == [f.keyframe for f in evaluated.frames]
    assert sum(len(f.visible()) for f in live.frames) > 0, "the comparison covers real masks"
    # per frame: the same instance sets (ids may be named differently, consistently)
    names: dict[str, str] = {}
    for got, want in zip(comparable(live.frames), comparable(evaluated.frames)):
        for g, w in zip(got.pop("instances"), want.pop("instances")):
            assert names.setdefault(g["id"], w["id"]) == w["id"]
            assert (g["state"], g["rle"]) == (w["state"], w["rle"]) and g["score"] == pytest.approx(w["score"], abs=1e-6)
        for key in ("keyframe_reason", "frame_index"):  # the message has no reason; its counter is the node's
            got.pop(key), want.pop(key)
        assert got == want
    node_summary, node_timeline = score([live])
    eval_summary, eval_timeline = score([evaluated])
    for key in METRICS:
        assert_close(node_summary[key], eval_summary[key], key)
    assert_close(strip_timing(node_summary["per_family"]), strip_timing(eval_summary["per_family"]))
    assert_close(strip_timing(node_summary["per_sequence"]), strip_timing(eval_summary["per_sequence"]))
    assert_close(strip_timing(node_timeline), strip_timing(eval_timeline))
    assert eval_summary["scored_frames"] == 10 and eval_summary["gIoU"] is not None

"""Synthetic ground-truth bags (sqlite3 and mcap, Image and CompressedImage) written by the generator and replayed
through the frame pipeline: what is written is what the video holds, every frame gets a result and its ground
truth, instructions follow the schedule (from YAML or from a topic in the bag), the replay equals the FramePipeline
run directly, and recorded timing drops frames like the node."""
from __future__ import annotations

import numpy as np
import pytest

from bag_helpers import comparable, model, replay, settings, synthetic
from instructsam_ros.bags.reader import BagError, BagSource, camera_name, camera_names
from instructsam_ros.bags.replay import ReplayOptions, replay_bag
from instructsam_tools.bag_eval.scoring import score
from instructsam.pipeline.image_decode import decode_image_message

CASES = [("sqlite3", False, 1), ("sqlite3", True, 1), ("mcap", False, 2), ("mcap", True, 1)]


@pytest.mark.parametrize("storage, compressed, cameras", CASES)
def test_synthetic_bag_round_trip_and_replay(tmp_path, storage, compressed, cameras):
    made = synthetic(tmp_path, storage=storage, compressed=compressed, cameras=cameras)[0]
    T = 6
    with BagSource(made.bag) as source:
        assert source.storage == storage and len(source.cameras) == cameras and source.image_count == T * cameras
        suffix = "/image_raw/compressed" if compressed else "/image_raw"
        assert source.cameras == {f"cam{k}": f"/cam{k}{suffix}" for k in range(cameras)}
        index = {c: 0 for c in source.cameras}
        for message in source.messages():
            camera = source.camera_of[message.topic]
            msg = source.deserialize(message)
            want = made.videos[int(camera[3:])].frames[index[camera]]
            got = decode_image_message(msg)
            if compressed:  # what OpenCV's JPEG encoder (quality 95) makes of the frame, as a camera driver would
                import cv2
                assert msg.format == "rgb8; jpeg compressed bgr8"
                ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(want[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert bytes(msg.data) == jpeg.tobytes()
                assert np.abs(got.astype(int) - want).mean() < 8
            else:
                np.testing.assert_array_equal(got, want)
            index[camera] += 1

    records = replay(made, output_bag=str(tmp_path / "out"), output_storage=storage)
    assert [f.status for f in records.frames] == ["processed"] * (T * cameras)
    assert all(f.gt is not None for f in records.frames), "every frame has ground truth"
    assert records.storage == storage and not records.skipped
    for k in range(cameras):
        frames = [f for f in records.frames if f.camera == f"cam{k}"]
        ids = [ins["id"] for ins in made.videos[k].instructions]
        assert [f.instruction_id for f in frames] == [ids[0]] * 3 + [ids[1]] * 3, "the schedule switches at T/2"
        assert [f.keyframe_reason for f in frames] == ["first", "", "", "instruction", "", ""]
        assert [f.frame_index for f in frames] == list(range(T))
        targets = [[t.object_id for t in f.gt.targets] for f in frames]
        want = [made.videos[k].instructions[t // 3]["targets_per_frame"][t] for t in range(T)]
        assert targets == want
    assert any(f.visible() for f in records.frames), "the comparison covers real masks"
    summary, timeline = score([records])
    assert summary["scored_frames"] == T * cameras == len(timeline)
    assert 0.0 <= summary["gIoU"] <= 1.0 and summary["J&F"] is not None
    with BagSource(tmp_path / "out") as out:
        assert out.storage == storage


def test_replay_equals_the_frame_pipeline_run_directly(tmp_path):
    """The replay is FramePipeline itself (submit then step), so it equals running it on the video's frames."""
    from instructsam.pipeline.frame_pipeline import FramePipeline

    made = synthetic(tmp_path, seed=4)[0]
    records = replay(made)
    pipeline = FramePipeline(model(), ["cam0"], settings())
    video = made.videos[0]
    for t, (image, record) in enumerate(zip(video.frames, records.frames)):
        ins = video.instructions[t // 3]
        if t % 3 == 0:
            pipeline.instructions.set(ins["text"], "cam0", ins["id"], ins["task"])
        pipeline.submit("cam0", image)
        result = pipeline.step("cam0")
        assert record.keyframe == result.keyframe and record.instruction_id == ins["id"]
        assert [(i.id, i.state) for i in record.instances] == [(i.id, i.state) for i in result.instances]
        assert [i.score for i in record.instances] == [float(np.float32(i.score)) for i in result.instances]
        from instructsam_ros.bags.records import decode_rle
        for got, want in zip(record.instances, result.instances):
            np.testing.assert_array_equal(decode_rle(got.rle, 48, 48), want.mask)


def test_instructions_from_a_topic_in_the_bag_equal_the_yaml_schedule(tmp_path):
    made = synthetic(tmp_path, cameras=2, instruction_topic="/planner/instruction", seed=1)[0]
    with BagSource(made.bag, instruction_topic="/planner/instruction") as source:
        assert source.ignored_topics == [] and len(source.cameras) == 2
    with BagSource(made.bag) as source:
        assert source.ignored_topics == ["/planner/instruction"], "not asked for: ignored"
    from_yaml = replay(made)
    from_topic = replay(made, schedule=None, instruction_topic="/planner/instruction")
    assert comparable(from_topic.frames) == comparable(from_yaml.frames)
    assert len({f.instruction_id for f in from_topic.frames}) == 4


def test_recorded_timing_drops_frames_like_the_node(tmp_path):
    made = synthetic(tmp_path, frames=8)[0]
    records = replay(made, timing="recorded", rate=100.0)  # 100 ms gaps played in 1 ms: the pipeline cannot keep up
    counts = records.counts()
    assert counts["frames"] == 8 and counts["processed"] + counts["dropped"] == 8
    # which early frames a newer one replaced before the worker took them is a race, as in the node; the newest
    # frame is never replaced, so it is always processed
    assert counts["dropped"] >= 1 and max(records.frames, key=lambda f: f.seq).status == "processed"
    assert records.stats["cam0"]["dropped"] == counts["dropped"], "the drops are the pipeline's own"
    summary, _ = score([records])
    assert summary["frames"]["dropped"] == counts["dropped"] and summary["num_frames"] == counts["processed"]


def test_unusable_inputs_raise_clear_errors(tmp_path):
    made = synthetic(tmp_path)[0]
    with pytest.raises(BagError, match="bag not found: .*nowhere"):
        BagSource(tmp_path / "nowhere")
    with pytest.raises(BagError, match=r"cannot open bag .*synthetic_0.gt.json"):
        BagSource(made.ground_truth)
    with pytest.raises(BagError, match=r"topic '/rear/image_raw' is not in the bag \(image topics: \['/cam0/image_raw'\]"):
        BagSource(made.bag, topics=["/rear/image_raw"])
    with pytest.raises(BagError, match="instruction topic '/planner' is not in the bag"):
        BagSource(made.bag, instruction_topic="/planner")
    with pytest.raises(ValueError, match="no instructions"):
        replay_bag(made.bag, model(), settings(), ReplayOptions(progress=False))
    with pytest.raises(FileExistsError, match="exists already"):
        replay(made, output_bag=str(made.bag))


def test_camera_names_from_topics():
    assert camera_name("/front/image_raw") == "front" == camera_name("/front/image_raw/compressed")
    assert camera_name("/image") == "image" and camera_name("/a/b/c") == "a_b_c"
    assert camera_name("/3d/image_rect") == "cam_3d"
    assert camera_names(["/cam/image_raw", "/cam/image_raw/compressed"]) == {
        "/cam/image_raw": "cam_image_raw", "/cam/image_raw/compressed": "cam_image_raw_compressed"}


class FailsOnFrame:
    """The real model, except that encoding one given image raises (a model failure in the middle of a bag)."""

    def __init__(self, model, image):
        self._model, self._image = model, image

    def encode_image(self, images, **kwargs):
        if isinstance(images, np.ndarray) and np.array_equal(images, self._image):
            raise RuntimeError("boom")
        return self._model.encode_image(images, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.mark.parametrize("timing", ["fast", "recorded"])
def test_a_failing_frame_is_reported_and_the_replay_goes_on(tmp_path, timing):
    from instructsam_tools.bag_eval.groundtruth import attach, load_ground_truth
    from instructsam_ros.bags.schedule import InstructionSchedule

    made = synthetic(tmp_path, seed=5)[0]
    broken = FailsOnFrame(model(), made.videos[0].frames[1])
    records = attach(replay_bag(made.bag, broken, settings(), ReplayOptions(
        schedule=InstructionSchedule.load(made.schedule), timing=timing, rate=0.5, progress=False)),
        load_ground_truth(made.ground_truth))
    statuses = [f.status for f in records.frames]
    if timing == "recorded" and statuses[1] == "dropped":  # too slow a machine: frame 1 never reached the model
        assert not records.skipped
        return
    assert statuses[1] == "failed" and statuses.count("failed") == 1
    assert set(statuses) <= {"processed", "failed", "dropped"} and statuses[0] == statuses[-1] == "processed"
    (skipped,) = records.skipped
    assert skipped.topic == "/cam0/image_raw" and skipped.stamp_ns == records.frames[1].stamp_ns
    assert skipped.reason == "processing failed: RuntimeError: boom"
    after = next(f for f in records.frames[2:] if f.status == "processed")
    assert after.keyframe, "the pipeline reset the camera: the next frame is detected afresh"
    assert score([records])[0]["status"] == "completed, 1 skipped"


def test_make_synthetic_command_of_the_ros_package(tmp_path):
    """`python -m instructsam_tools.bag_eval make-synthetic` as a user runs it: bags + ground truth + schedules."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "instructsam_tools.bag_eval", "make-synthetic", "--out", str(tmp_path),
                          "--storage", "mcap", "--compressed", "--format", "png", "--videos", "2", "--cameras", "2",
                          "--frames", "3", "--size", "32"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for i in range(2):
        assert f"synthetic_{i}  ground truth synthetic_{i}.gt.json" in out.stdout
        with BagSource(tmp_path / f"synthetic_{i}") as source:
            assert source.storage == "mcap" and source.image_count == 6
            assert set(source.topic_types.values()) == {"sensor_msgs/msg/CompressedImage"}
            msg = source.deserialize(next(source.messages()))
            assert msg.format == "rgb8; png compressed bgr8" and decode_image_message(msg).shape == (32, 32, 3)
    from instructsam_tools.bag_eval.groundtruth import load_ground_truth
    gt = load_ground_truth(tmp_path / "synthetic_1.gt.json")
    assert set(gt.topics) == {"/cam0/image_raw/compressed", "/cam1/image_raw/compressed"}
    assert all(len(t.frames) == 3 for t in gt.topics.values()) and len(gt.instructions) == 4

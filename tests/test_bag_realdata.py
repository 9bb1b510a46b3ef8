"""The real rosbag2 files in ../shared/realdata/rosbags through the bag_eval CLI: the valid mono8 bag (2 x 2 pixels,
stamps from t=0) runs end to end; every malformed Image/CompressedImage message of the two rosbags-rs test bags is
reported (topic, timestamps, reason) and skipped while their 90-odd other topics are ignored; the exit status and
summary say "completed, N skipped". Bags that cannot be read stop the run with a clear error naming the file."""
from __future__ import annotations

import json

import pytest

from bag_helpers import tiny_dir
from instructsam_tools.bag_eval.cli import main
from instructsam_ros.bags.records import BagRecords

MONO8 = "ros2bag_tools_images_mono8_sqlite3"
MALFORMED = ("rosbags_rs_test_bag_sqlite3", "rosbags_rs_test_bag_mcap")


def run(capsys, *args):
    code = main(["run", *map(str, args), "--checkpoint", str(tiny_dir()), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_mono8_bag_runs_end_to_end(tmp_path, realdata, capsys):
    bag = realdata / "rosbags" / MONO8
    code, out, err = run(capsys, bag, "--out", tmp_path / "r", "--instruction", "the bright pixel", "--write-bags",
                         "--overlay")
    assert code == 0, err
    assert "bag_eval: completed, 0 skipped (1 bag(s), 3 frames processed, 0 dropped, 0 scored)" in out
    records = BagRecords.load(tmp_path / "r" / "records" / f"{MONO8}.records.json")
    assert records.cameras == {"image": "/image"} and records.storage == "sqlite3"
    assert [(f.status, f.height, f.width) for f in records.frames] == [("processed", 2, 2)] * 3
    # this recorder wrote nanosec = 0, 1e9, 2e9 with sec = 0: kept as recorded, still one key per frame
    assert [f.stamp_ns for f in records.frames] == [0, 1_000_000_000, 2_000_000_000]
    assert records.frames[0].keyframe and records.frames[0].instruction == "the bright pixel"
    summary = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert summary["status"] == "completed, 0 skipped" and summary["num_frames"] == 3
    assert (tmp_path / "r" / "timeline.png").is_file() and "completed, 0 skipped" in (tmp_path / "r" / "metrics.md").read_text()
    from rosbags.highlevel import AnyReader
    with AnyReader([tmp_path / "r" / "bags" / f"{MONO8}_instances"]) as reader:
        got = [(c.topic, reader.deserialize(raw, c.msgtype)) for c, _, raw in reader.messages()]
    results = [m for t, m in got if t == "/image/instances"]
    overlays = [m for t, m in got if t == "/image/overlay"]
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in results] == [(0, 0), (0, 1_000_000_000),
                                                                             (0, 2_000_000_000)]
    assert all(m.header.frame_id == "camera_optical_frame" and (m.height, m.width) == (2, 2) for m in results)
    assert [(o.height, o.width, o.encoding) for o in overlays] == [(2, 2, "rgb8")] * 3


def test_malformed_messages_are_reported_and_skipped(tmp_path, realdata, capsys):
    bags = [realdata / "rosbags" / name for name in MALFORMED]
    code, out, err = run(capsys, *bags, "--out", tmp_path / "r", "--instruction", "anything")
    assert code == 0, err
    assert "bag_eval: completed, 8 skipped (2 bag(s), 0 frames processed" in out
    summary = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert summary["status"] == "completed, 8 skipped" and summary["skipped"] == 8
    for name in MALFORMED:
        records = BagRecords.load(tmp_path / "r" / "records" / f"{name}.records.json")
        assert records.frames == []
        assert set(records.cameras.values()) == {"/test/sensor_msgs/image", "/test/sensor_msgs/compressed_image"}
        assert len(records.ignored_topics) == 92 and "/test/stereo_msgs/disparity_image" in records.ignored_topics
        skipped = [(s.topic, s.reason) for s in records.skipped]
        assert len(skipped) == 4
        for topic, reason in skipped:
            if topic == "/test/sensor_msgs/image":
                assert "rgb8 image 640x480: data has 30 bytes, but step x height = 1920 x 480 = 921600" in reason
            else:
                assert topic == "/test/sensor_msgs/compressed_image"
                assert "cannot decode compressed image (format 'jpeg', 10 bytes)" in reason
        for s in records.skipped:  # each with both timestamps, and printed as such
            assert s.log_time_ns > 1_749_315_000 * 10**9 and s.stamp_ns > 1_749_315_000 * 10**9
            assert f"skipped: {name} {s.topic} log_time={s.log_time_ns} stamp={s.stamp_ns}: {s.reason}" in err
    md = (tmp_path / "r" / "metrics.md").read_text()
    assert "## Skipped messages" in md and md.count("| rosbags_rs_test_bag_") == 2 + 8


def test_strict_mode_fails_on_skips(tmp_path, realdata, capsys):
    code, out, _ = run(capsys, realdata / "rosbags" / MALFORMED[1], "--out", tmp_path / "r", "--instruction", "x",
                       "--strict")
    assert code == 1 and "completed, 4 skipped" in out


@pytest.mark.parametrize("bag, message", [
    ("missing", "bag_eval: error: bag not found: {tmp}/missing"),
    ("empty", "bag_eval: error: cannot open bag {tmp}/empty"),
])
def test_unreadable_bags_stop_the_run_naming_the_file(tmp_path, capsys, bag, message):
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, tmp_path / bag, "--out", tmp_path / "r", "--instruction", "x")
    assert code == 2 and message.format(tmp=tmp_path) in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_missing_instructions_and_checkpoint_are_clear_errors(tmp_path, realdata, capsys):
    bag = realdata / "rosbags" / MONO8
    code, _, err = run(capsys, bag, "--out", tmp_path / "r")
    assert code == 2 and "no instructions for bag" in err and f"{MONO8}.instructions.yaml" in err
    code = main(["run", str(bag), "--out", str(tmp_path / "r"), "--instruction", "x", "--checkpoint",
                 str(tmp_path / "nope")])
    assert code == 2 and "checkpoint directory" in capsys.readouterr().err

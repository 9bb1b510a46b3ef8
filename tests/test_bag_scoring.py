"""Bag scoring, ground truth, schedules and records on constructed data (no model): known metric values, id-name
independence, identity switches, the JSON round trip, and clear errors for bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from instructsam_tools.bag_eval.groundtruth import GroundTruthError, attach, ground_truth_json, parse_ground_truth
from instructsam_ros.bags.records import (BagRecords, FrameRecord, FrameTruth, InstanceRecord, TruthObject,
                                      encode_rle)
from instructsam_ros.bags.schedule import InstructionSchedule, ScheduleError
from instructsam_tools.bag_eval.scoring import markdown_report, score, strip_timing
from instructsam_tools.evaluation.video import boundary_fmeasure, region_similarity
from instructsam.pipeline.instructions import InstructionBook

H, W = 24, 32


def box(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def frame(i, instances, targets, instruction="i0", family="category", camera="cam0", status="processed"):
    """instances: [(track id, mask, score, state)]; targets: [(object id, mask)] or None (no ground truth)."""
    return FrameRecord(
        seq=i, camera=camera, topic=f"/{camera}/image_raw", index=i, log_time_ns=i * 100, stamp_ns=i * 100,
        frame_id="f", status=status, instruction_id=instruction, instruction="text", keyframe=i == 0,
        frame_index=i, processing_ms=1.0 + i, latency_ms=2.0 + i, height=H, width=W,
        instances=[InstanceRecord(id=t, score=s, state=st, rle=encode_rle(m)) for t, m, s, st in instances],
        gt=None if targets is None else FrameTruth([TruthObject(o, encode_rle(m)) for o, m in targets], family))


def bag(frames, name="bag"):
    return BagRecords(bag=f"/data/{name}", name=name, storage="mcap", cameras={"cam0": "/cam0/image_raw"},
                      timing="fast", rate=1.0, settings={}, instructions_from="test", frames=frames)


A, B = box(2, 10, 2, 10), box(12, 20, 14, 30)


def test_perfect_predictions_score_one_everywhere():
    frames = [frame(i, [("7", np.roll(A, i, 1), 0.9, "tracked"), ("3", B, 0.8, "tracked")],
                    [(1, np.roll(A, i, 1)), (2, B)]) for i in range(4)]
    frames.append(frame(4, [], [], instruction="none", family="no_target"))
    summary, timeline = score([bag(frames)])
    for key in ("mAP", "AP50", "gIoU", "cIoU", "N-acc", "T-acc", "J", "F", "J&F", "MOTA"):
        assert summary[key] == pytest.approx(1.0), key
    assert summary["id_switches"] == 0 and summary["scored_frames"] == 5 and summary["status"] == "completed, 0 skipped"
    assert [row["iou"] for row in timeline] == [1.0] * 5
    assert summary["per_sequence"]["bag/cam0/i0"]["per_object"]["1"]["track"] == "7", "reported ids are shown"


def test_known_values_for_one_frame():
    pred = box(2, 10, 6, 14)  # overlaps A in 8 x 4 of 8 x 8 -> IoU 32 / 96
    summary, timeline = score([bag([frame(0, [("1", pred, 0.9, "new")], [(1, A)])])])
    assert summary["gIoU"] == pytest.approx(32 / 96) and summary["cIoU"] == pytest.approx(32 / 96)
    assert summary["J"] == pytest.approx(region_similarity(A, pred))
    assert summary["F"] == pytest.approx(boundary_fmeasure(A, pred))
    assert summary["mAP"] == pytest.approx(0.0)  # IoU 0.33 < 0.5 at every COCO threshold
    assert summary["latency_ms"]["p50"] == 2.0 and summary["processing_ms"]["p50"] == 1.0


def test_metrics_do_not_depend_on_track_id_names():
    def frames(names):
        return [frame(i, [(names[0], np.roll(A, i, 1), 0.9, "tracked"), (names[1], box(12, 20, 14, 22 + i), 0.6,
                                                                           "tracked")],
                      [(1, np.roll(A, i, 1)), (2, B)]) for i in range(3)]

    one, _ = score([bag(frames(["1", "2"]))])
    other, _ = score([bag(frames(["zz-9", "a"]))])
    for s in (one, other):
        for seq in s["per_sequence"].values():
            for obj in seq["per_object"].values():
                obj.pop("track")
    assert strip_timing(one) == strip_timing(other)


def test_identity_switch_and_lost_instances():
    frames = [frame(0, [("a", A, 0.9, "new")], [(1, A)]),
              frame(1, [("a", A, 0.9, "lost")], [(1, A)]),  # lost: no mask, not a prediction
              frame(2, [("b", A, 0.9, "new")], [(1, A)])]  # the object now carries another id
    summary, timeline = score([bag(frames)])
    assert summary["id_switches"] == 1 and [row["id_switches_cum"] for row in timeline] == [0, 0, 1]
    assert [row["num_pred"] for row in timeline] == [1, 0, 1]
    assert timeline[1]["iou"] == 0.0 and summary["misses"] == 1


def test_frames_without_ground_truth_or_result_are_not_scored():
    frames = [frame(0, [("1", A, 0.9, "new")], [(1, A)]), frame(1, [("1", A, 0.9, "tracked")], None),
              frame(2, [], None, status="dropped")]
    summary, timeline = score([bag(frames)])
    assert summary["scored_frames"] == 1 and summary["num_frames"] == 2 and summary["frames"]["dropped"] == 1
    assert len(timeline) == 2 and "iou" not in timeline[1]


def test_records_json_round_trip(tmp_path):
    records = bag([frame(0, [("1", A, 0.9, "new")], [(1, A)]), frame(1, [], None, status="no_instruction")])
    path = records.save(tmp_path / "r.records.json")
    assert BagRecords.load(path) == records
    with pytest.raises(ValueError, match="not a bag-records file"):
        BagRecords.from_json({"format": "other"}, "x.json")


def test_bags_are_scored_in_name_order_and_names_must_be_unique():
    one = bag([frame(0, [("1", A, 0.9, "new")], [(1, A)])], "b1")
    two = bag([frame(0, [("1", B, 0.9, "new")], [(1, A)])], "a2")
    assert strip_timing(score([one, two])) == strip_timing(score([two, one]))
    with pytest.raises(ValueError, match="share the name"):
        score([one, bag([], "b1")])
    two.settings = {"keyframe_interval": 5}
    with pytest.raises(ValueError, match="other pipeline settings"):
        score([one, two])


def test_markdown_report_lists_skipped_messages():
    from instructsam_ros.bags.records import SkippedMessage
    records = bag([frame(0, [("1", A, 0.9, "new")], [(1, A)])])
    records.skipped = [SkippedMessage("bag", "/cam0/image_raw", 5, None, "cannot deserialize: bad | data")]
    summary, _ = score([records])
    md = markdown_report(summary)
    assert "completed, 1 skipped" in md and "/cam0/image_raw | 5 | ? | cannot deserialize: bad \\| data" in md


# ---- ground truth ------------------------------------------------------------------------------------------
def gt_doc(**frame_extra):
    seg = {"size": [H, W], "counts": encode_rle(A)}
    frame_entry = dict({"stamp": {"sec": 0, "nanosec": 100}, "instances": [{"object_id": 1, "segmentation": seg},
                                                                          {"object_id": 2, "segmentation": seg}]},
                       **frame_extra)
    return ground_truth_json({"/cam0/image_raw": {"height": H, "width": W, "frames": [frame_entry]}},
                             [{"id": "i0", "text": "t", "family": "category", "target_ids": [2, 5]}])


def test_ground_truth_targets_from_ids_or_per_frame():
    gt = parse_ground_truth(gt_doc(), "gt.json")
    truth = gt.frame_truth("/cam0/image_raw", 100, "i0")
    assert [t.object_id for t in truth.targets] == [2] and truth.family == "category"  # 5 is not on this frame
    gt = parse_ground_truth(gt_doc(targets={"i0": [1]}), "gt.json")
    assert [t.object_id for t in gt.frame_truth("/cam0/image_raw", 100, "i0").targets] == [1]
    assert gt.frame_truth("/cam0/image_raw", 999, "i0") is None and gt.frame_truth("/x", 100, "i0") is None
    assert gt.frame_truth("/cam0/image_raw", 100, "other") is None
    records = bag([frame(1, [("1", A, 0.9, "new")], None)])  # stamp 100
    attach(records, gt)
    assert records.frames[0].gt is not None and records.ground_truth == "gt.json"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="coco"), "not a bag ground-truth file"),
    (lambda d: d["topics"]["/cam0/image_raw"]["frames"].append(d["topics"]["/cam0/image_raw"]["frames"][0]),
     "duplicate stamp 100"),
    (lambda d: d["topics"]["/cam0/image_raw"]["frames"][0].update(targets={"i0": [9]}), "object ids \\[9\\]"),
    (lambda d: d["topics"]["/cam0/image_raw"]["frames"][0].update(targets={"zz": [1]}), "unknown instruction id"),
    (lambda d: d["topics"]["/cam0/image_raw"]["frames"][0]["instances"][0]["segmentation"].update(size=[3, 3]),
     r"frames\[0\].instances\[0\].segmentation"),
    (lambda d: d["topics"]["/cam0/image_raw"]["frames"][0].pop("stamp"), "needs 'stamp'"),
])
def test_bad_ground_truth_is_refused_naming_the_file_and_field(change, message):
    doc = json.loads(json.dumps(gt_doc()))
    change(doc)
    with pytest.raises(GroundTruthError, match=message) as err:
        parse_ground_truth(doc, "site/gt.json")
    assert "site/gt.json" in str(err.value)


def test_ground_truth_size_must_match_the_frames():
    gt = parse_ground_truth(gt_doc(), "gt.json")
    records = bag([frame(1, [], None)])
    records.frames[0].height = H + 1
    with pytest.raises(GroundTruthError, match="is 24x32 in the ground truth"):
        attach(records, gt)


# ---- schedules ---------------------------------------------------------------------------------------------
def test_schedule_applies_per_camera_by_frame_and_time():
    schedule = InstructionSchedule.parse({"instructions": [
        {"frame": 0, "text": "everything"},  # every camera
        {"frame": 2, "camera": "cam1", "id": "b", "text": "the star"},
        {"time": 0.5, "camera": "/cam0/image_raw", "text": ""},  # by topic; clears
    ]}, "s.yaml")
    book = InstructionBook(["cam0", "cam1"])
    cursor = schedule.cursor({"cam0": "/cam0/image_raw", "cam1": "/cam1/image_raw"}, start_time_ns=1_000)
    cursor.apply_due(book, "cam0", 0, 1_000)
    assert book.get("cam0").text == "everything" and book.get("cam0").id == "schedule-0" and book.get("cam1") is None
    cursor.apply_due(book, "cam1", 3, 1_000)  # late first frame: both due entries, in file order
    assert book.get("cam1").id == "b"
    cursor.apply_due(book, "cam0", 1, 1_000 + 400_000_000)
    assert book.get("cam0") is not None
    cursor.apply_due(book, "cam0", 2, 1_000 + 500_000_000)
    assert book.get("cam0") is None and book.get("cam1").id == "b"
    assert InstructionSchedule.parse(json.loads(json.dumps(
        __import__("yaml").safe_load(schedule.to_yaml()))), "x").entries == schedule.entries


@pytest.mark.parametrize("entry, message", [
    ({"text": "a"}, "exactly one of 'frame'"),
    ({"frame": 0, "time": 1, "text": "a"}, "exactly one of 'frame'"),
    ({"frame": 0}, "needs 'text'"),
    ({"frame": -1, "text": "a"}, ">= 0"),
    ({"frame": 0, "text": "a", "colour": "red"}, "unknown keys \\['colour'\\]"),
])
def test_bad_schedules_are_refused(entry, message):
    with pytest.raises(ScheduleError, match=message):
        InstructionSchedule.parse([entry], "plan.yaml")


def test_schedule_camera_must_exist():
    schedule = InstructionSchedule.parse([{"frame": 0, "camera": "rear", "text": "a"}], "plan.yaml")
    with pytest.raises(ScheduleError, match="camera 'rear' is not in this bag"):
        schedule.cursor({"front": "/front/image_raw"}, 0)


def test_shards_partition_the_bags_by_name():
    from instructsam_tools.bag_eval.cli import select_shard
    from instructsam_tools.bag_eval.runner import BagJob

    jobs = [BagJob(bag=f"/x/{n}", name=n) for n in ("d", "a", "c", "b", "e")]
    shards = [[j.name for j in select_shard(jobs, f"{k}/2")] for k in range(2)]
    assert shards == [["a", "c", "e"], ["b", "d"]]
    assert [j.name for j in select_shard(jobs, "env", {"RANK": "1", "WORLD_SIZE": "3"})] == ["b", "e"]
    for bad, message in (("2/2", "0 <= K < N"), ("x", "expected K/N"), ("env", "RANK and WORLD_SIZE")):
        with pytest.raises(ValueError, match=message):
            select_shard(jobs, bad, {})

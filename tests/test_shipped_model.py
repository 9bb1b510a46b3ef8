"""The shipped checkpoint loads through the same from_pretrained path and reproduces its recorded metrics."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from instructsam_tools.evaluation.evaluate import evaluate_model, load_model
from instructsam_tools.data.batching import build_dataset

CHECKPOINT = REPO / "checkpoints" / "instructsam-tiny"
RECORDED = REPO / "docs" / "shipped_model_eval" / "test" / "metrics.json"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return load_model(CHECKPOINT).eval()


def test_shipped_checkpoint_reproduces_the_recorded_test_metrics(model):
    """README's numbers come from `python -m instructsam_tools.evaluation.evaluate --checkpoint checkpoints/instructsam-tiny
    --data synthetic:test:800`; the same evaluation here must agree within 0.01."""
    recorded = json.loads(RECORDED.read_text())
    summary, _ = evaluate_model(model, build_dataset("synthetic:test:800"), num_overlays=0)
    assert summary["num_samples"] == recorded["num_samples"] == 800
    for key in ("mAP", "AP50", "gIoU", "cIoU", "N-acc", "T-acc", "mIoU"):
        assert summary[key] == pytest.approx(recorded[key], abs=0.01), key


def test_the_shipped_checkpoint_carries_the_version_the_readme_reports(model):
    version = model.config.model_version
    assert version.startswith("instructsam-tiny ") and version.split()[-1].count(".") == 1
    readme = (REPO / "README.md").read_text()
    assert f"| measurement | data | {version} | target |" in readme  # the quality table's column is this model


TRACKER_RECORD = REPO / "docs" / "shipped_model_eval" / "tracker" / "metrics.json"


def test_shipped_tracker_reproduces_the_recorded_jf(model):
    """README's tracker J&F comes from `python -m instructsam_tools.evaluation.tracker --checkpoint
    checkpoints/instructsam-tiny --data synthetic_video:test:30 --out docs/shipped_model_eval/tracker`."""
    from instructsam_tools.evaluation.tracker import evaluate_tracker

    recorded = json.loads(TRACKER_RECORD.read_text())
    videos = build_dataset(recorded["data"], clip_frames=recorded["frames_per_video"])
    summary = evaluate_tracker(model, videos, progress=False)
    assert summary["objects"] == recorded["objects"] > 0
    for key in ("J&F", "J", "F", "object_overlap"):
        assert summary[key] == pytest.approx(recorded[key], abs=0.01), key
    # it follows the object it was given (a tracker that segments the same thing for every prompt scores ~1)
    assert summary["object_overlap"] < 0.5


def test_shipped_tracker_keeps_a_moving_objects_id_for_20_frames(model):
    """The tracking half of "a moving object keeps its track id for >= 20 frames", with the shipped model: the
    object's mask on the first frame stands in for the keyframe detection (tests/test_pipeline_shipped.py runs the
    detector too), then the pipeline's CameraTracker carries it with SAM3's tracker
    alone (no further keyframe) over the next 29 frames. The same id must stay on a moving object that stays in view
    for >= 20 consecutive frames: its mask overlaps that object more than any other, with at
    least the IoU from which the pipeline's next keyframe continues a track (match_iou, 0.3). (The tiny tracker's
    masks are still loose, J ~ 0.2-0.5, so IoU 0.5 is not asked; docs/shipped_model_eval/tracker has its J&F.)"""
    from types import SimpleNamespace

    import numpy as np

    from instructsam_tools.data.synthetic import SyntheticVideos
    from instructsam.pipeline.frame_pipeline import PipelineSettings
    from instructsam.pipeline.tracker_session import CameraTracker, mask_box, mask_iou

    s = PipelineSettings()
    runs = []
    for video in SyntheticVideos("val", size=8, num_frames=30):
        objects = sorted(video.masks)
        for k, masks in video.masks.items():
            if not masks.any(axis=(1, 2)).all():
                continue  # out of view (or fully occluded) on some frame
            if np.ptp(video.centers[k], axis=0).max() <= 10:
                continue  # not moving
            tracker = CameraTracker()
            with torch.no_grad():
                first = tracker.keyframe(
                    model, model.encode_image(video.frames[0], vlm=False),
                    SimpleNamespace(masks=masks[:1], scores=np.ones(1, np.float32), boxes=mask_box(masks[0])[None]),
                    mask_threshold=s.mask_threshold, match_iou=s.match_iou, nms_iou=s.nms_iou,
                    max_tracked=s.max_tracked, lost_patience=30)
                key, run = first[0].key, 1
                for t in range(1, video.num_frames):
                    tracks = tracker.track(model, model.encode_image(video.frames[t], vlm=False),
                                           mask_threshold=s.mask_threshold, nms_iou=s.nms_iou, lost_patience=30)
                    same = [tr for tr in tracks if tr.key == key and tr.state != "lost"]
                    if not same:
                        break
                    ious = mask_iou(np.stack([video.masks[o][t] for o in objects]), same[0].mask[None])[:, 0]
                    if objects[int(ious.argmax())] != k or ious.max() < s.match_iou:
                        break
                    run += 1
            runs.append(run)
    assert len(runs) >= 5, f"too few moving objects that stay in view: {len(runs)}"
    assert max(runs) >= 20, f"frames each object kept its id: {runs}"


def test_with_the_shipped_model_a_new_instruction_replaces_the_instance_set_on_the_next_frame(model):
    """The pipeline half of the switch requirement with the shipped checkpoint: the first frame processed after a
    new instruction arrives is a keyframe for that instruction, and none of the old instruction's ids survive it
    (whether the new set is *right* is the detector's accuracy, tests/test_pipeline_shipped.py)."""
    from instructsam_tools.data.synthetic import SyntheticVideos
    from instructsam.pipeline.frame_pipeline import FramePipeline, PipelineSettings

    video = SyntheticVideos("val", size=1, num_frames=16)[0]
    first, second = video.instructions[0], video.instructions[1]
    # at the checkpoint's calibrated threshold (the pipeline's own default, 0.5, is above every score it gives)
    p = FramePipeline(model, ["cam"], PipelineSettings(keyframe_interval=10,
                                                       score_threshold=model.config.score_threshold))
    p.instructions.set(first["text"])  # the default task template: "video" is not one the tiny model was trained on
    old_ids, reasons = set(), []
    for t in range(12):
        p.submit("cam", video.frames[t], frame=t)
        r = p.step("cam")
        reasons.append(r.keyframe_reason)
        old_ids |= {i.id for i in r.instances}
    assert old_ids, "the shipped model found nothing for the first instruction at its calibrated threshold"
    assert reasons[1:] == ["", "", "", "", "", "", "", "", "", "interval", ""]  # tracked frames in between
    p.instructions.set(second["text"])
    p.submit("cam", video.frames[12], frame=12)
    r = p.step("cam")
    assert r.keyframe_reason == "instruction" and r.instruction.text == second["text"]
    assert not old_ids & {i.id for i in r.instances}

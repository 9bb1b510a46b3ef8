"""Section 10: levers on a tracked frame's cost, each measured for cost and for tracking quality side by side.

LEVERS are PipelineSettings changes (node parameters):
  tracker_memory_frames  how many past frames SAM3's tracker reads through memory attention, which runs once per
                         tracked object over every kept frame's features;
  tracker_scale          SAM3's tracker, and the ViT pass a tracked frame runs, on a smaller token grid than the
                         detector's (instructsam/tracker_resolution.py); a keyframe runs the ViT at both sizes;
  skip_unchanged         a tracked frame whose 8x8 block means moved by less than this many grey levels from the last
                         frame the model saw repeats its instances without model work.
Cost: the FramePipeline processing_ms of a tracked frame and of a keyframe at each config (random weights,
NUM_OBJECTS objects, 640x480, moving objects), their FLOPs at full size (counted in section 6), and for SKIP_LEVERS the
mean frame over a keyframe cycle of a still scene with sensor noise.
Quality, with the shipped model: the tracker's J&F (instructsam_tools.evaluation.tracker, DAVIS protocol: the
tracker given the first frame's masks) on QUALITY_VIDEOS synthetic test videos of QUALITY_FRAMES frames, and the bag
evaluator's figures (the whole pipeline: detector on keyframes, tracker between, ids) on BAG_VIDEOS synthetic bags.
"""
from __future__ import annotations

import tempfile

import numpy as np

from instructsam.pipeline.frame_pipeline import PipelineSettings
from instructsam.pipeline.tracker_session import set_memory_frames
from instructsam_tools.benchmarks.common import FRAME_SIZE, Target, moving_shapes, run_frames, tracking_pipeline
from instructsam_tools.benchmarks.paths import KEYFRAME_INTERVAL, NUM_OBJECTS, pipeline_paths

DEFAULTS = "defaults"
LEVERS = {  # name -> PipelineSettings changes from the defaults (4 memory frames, scale 1); DEFAULTS first
    DEFAULTS: {},
    "memory 7 (SAM3's own)": {"tracker_memory_frames": 0},  # = OWN
    "memory 2": {"tracker_memory_frames": 2},
    "scale 2/3": {"tracker_scale": 2 / 3},  # full size: 48 x 48 tokens instead of 72 x 72 (SAM3's 24-token windows)
    "scale 1/2": {"tracker_scale": 1 / 2},
    "skip unchanged 4": {"skip_unchanged": 4.0},
}
STATIC_NOISE = 2.0  # grey-level standard deviation of the sensor noise on the still scene
SKIP_LEVERS = (DEFAULTS, "skip unchanged 4")  # timed on a still scene too (the others cost the same there)
QUALITY_VIDEOS = 16
QUALITY_FRAMES = 12
BAG_VIDEOS = 4
BAG_FRAMES = 30
BAG_SIZE = 112
BAG_KEYS = ("J&F", "HOTA", "IDF1", "id_switches", "gIoU")


def apply_lever(model, changes: dict) -> dict:
    """Set a lever's model-wide tracker settings (the rest as PipelineSettings' defaults); returns what is in
    effect."""
    settings = PipelineSettings(**changes)
    frames = set_memory_frames(model, settings.tracker_memory_frames)
    size = model.set_tracker_scale(settings.tracker_scale)
    return {"memory_frames": frames, "tracker_input_size": size}


def tracked_cost(model, repeats: int) -> dict:
    """Per lever: tracked-frame and keyframe medians in ms, and the tracker settings in effect."""
    out = {}
    for name, changes in LEVERS.items():
        timings, objects = pipeline_paths(model, repeats, NUM_OBJECTS, **changes)
        out[name] = {"tracked_ms": timings["tracked"].median, "keyframe_ms": timings["keyframe"].median,
                     "objects": objects, **apply_lever(model, changes)}
        if name in SKIP_LEVERS:
            out[name]["still_scene_ms"] = still_scene_ms(model, repeats, changes)
    apply_lever(model, {})
    return out


def still_scene_ms(model, repeats: int, changes: dict) -> float:
    """Mean processing_ms per frame over whole keyframe cycles of one frame repeated with sensor noise."""
    rng = np.random.default_rng(0)
    still = moving_shapes(1, *FRAME_SIZE)[0]
    frames = [np.clip(still + rng.normal(0, STATIC_NOISE, still.shape), 0, 255).astype(np.uint8)
              for _ in range(2 * KEYFRAME_INTERVAL)]
    pipeline = tracking_pipeline(model, NUM_OBJECTS, KEYFRAME_INTERVAL, **changes)
    run_frames(pipeline, frames, KEYFRAME_INTERVAL)
    results = run_frames(pipeline, frames, KEYFRAME_INTERVAL * max(1, repeats), start=KEYFRAME_INTERVAL)
    return float(np.mean([r.processing_ms for r in results]))


def tracker_quality(checkpoint) -> dict:
    """Per lever, the shipped model's tracker J&F and the bag evaluator's figures on synthetic bags."""
    from instructsam.loading import load_model
    from instructsam_ros.bags.replay import ReplayOptions
    from instructsam_tools.bag_eval.runner import default_job, run_job
    from instructsam_tools.bag_eval.scoring import score
    from instructsam_tools.bag_eval.synthetic_bags import make_synthetic_bags
    from instructsam_tools.data.batching import build_dataset
    from instructsam_tools.evaluation.tracker import evaluate_tracker

    model = load_model(checkpoint)
    videos = build_dataset(f"synthetic_video:test:{QUALITY_VIDEOS}", clip_frames=QUALITY_FRAMES)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bags = make_synthetic_bags(tmp, videos=BAG_VIDEOS, frames=BAG_FRAMES, size=BAG_SIZE, seed=1)
        for name, changes in LEVERS.items():
            effect = apply_lever(model, changes)
            summary = evaluate_tracker(model, videos, progress=False)
            records = [run_job(default_job(b.bag), model, PipelineSettings(**changes), ReplayOptions(progress=False))
                       for b in bags]
            bag = score(records)[0]
            out[name] = {**{k: summary[k] for k in ("J&F", "J", "F", "object_overlap", "objects")},
                         "bag": {k: bag.get(k) for k in BAG_KEYS}, **effect}
    apply_lever(model, {})
    return out


QUALITY_TOLERANCE = 0.02  # J&F the defaults may lose against SAM3's own tracker settings
OWN = "memory 7 (SAM3's own)"  # the tracker as the checkpoint defines it: every memory frame, full resolution


def quality_targets(quality: dict) -> list[Target]:
    """The defaults' tracking quality against the checkpoint's own tracker settings: the tracker's J&F and the bag
    evaluator's."""
    ours, own = quality[DEFAULTS], quality[OWN]
    return [Target("levers", f"{what}: defaults - SAM3's own tracker settings", "tiny", value(ours) - value(own),
                   QUALITY_TOLERANCE, unit="J&F", absolute=True, note=f"{value(ours):.3f} vs {value(own):.3f}")
            for what, value in (("tracker J&F", lambda q: q["J&F"]), ("bag J&F", lambda q: q["bag"]["J&F"]))]


__all__ = ["LEVERS", "OWN", "DEFAULTS", "SKIP_LEVERS", "apply_lever", "tracked_cost", "still_scene_ms",
           "tracker_quality", "quality_targets", "QUALITY_VIDEOS", "QUALITY_FRAMES", "BAG_VIDEOS", "BAG_FRAMES"]

"""Section 10: levers on a tracked frame's cost, each measured for cost and for tracking quality side by side.

The memory bank (tracker_memory_frames): how many past frames SAM3's tracker reads through memory attention, which
runs once per tracked object over every kept frame's features. Cost: the tracked frame's FramePipeline
processing_ms at each config (random weights, NUM_OBJECTS objects, 640x480) and its FLOPs at full size (counted in
section 6). Quality: the shipped model's tracker J&F (instructsam_tools.evaluation.tracker, DAVIS protocol) on
QUALITY_VIDEOS synthetic test videos of QUALITY_FRAMES frames.
"""
from __future__ import annotations

from instructsam.pipeline.tracker_session import set_memory_frames
from instructsam_tools.benchmarks.paths import NUM_OBJECTS, pipeline_paths

MEMORY_FRAMES = (0, 4, 2)  # 0: the checkpoint's own (7 for SAM3)
QUALITY_VIDEOS = 16
QUALITY_FRAMES = 12


def tracked_cost(model, repeats: int) -> dict:
    """Per memory setting (keyed by the frames in effect): tracked-frame and keyframe medians in ms."""
    out = {}
    for frames in MEMORY_FRAMES:
        timings, objects = pipeline_paths(model, repeats, NUM_OBJECTS, tracker_memory_frames=frames)
        out[str(set_memory_frames(model, frames))] = {"tracked_ms": timings["tracked"].median,
                                                      "keyframe_ms": timings["keyframe"].median, "objects": objects}
    set_memory_frames(model, 0)
    return out


def tracker_quality(checkpoint) -> dict:
    """The shipped tracker's J&F per memory setting (keyed by the frames in effect)."""
    from instructsam.loading import load_model
    from instructsam_tools.data.batching import build_dataset
    from instructsam_tools.evaluation.tracker import evaluate_tracker

    model = load_model(checkpoint)
    videos = build_dataset(f"synthetic_video:test:{QUALITY_VIDEOS}", clip_frames=QUALITY_FRAMES)
    out = {}
    for frames in MEMORY_FRAMES:
        kept = set_memory_frames(model, frames)
        summary = evaluate_tracker(model, videos, progress=False)
        out[str(kept)] = {k: summary[k] for k in ("J&F", "J", "F", "object_overlap", "objects")}
    return out


__all__ = ["tracked_cost", "tracker_quality", "MEMORY_FRAMES", "QUALITY_VIDEOS", "QUALITY_FRAMES"]

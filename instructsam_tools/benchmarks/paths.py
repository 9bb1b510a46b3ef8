"""Section 1: the cost of each path on one 640x480 frame, and section 2: N instructions batched vs separate.

    cold pass      encode_image + segment (image prefix + instruction + queries) + postprocess, on new features
    switch         segment + postprocess for a new instruction on features already encoded, whose VLM prefix KV cache
                   is filled (what the node can do when the instruction changes between frames)
    keyframe       a FramePipeline keyframe with tracks: encode + detect + associate + re-condition SAM3's tracker
    tracked frame  a FramePipeline tracked frame: SAM3's ViT + the tracker's neck (no VLM vision tower, no detector
                   FPN neck) + SAM3 tracker step for the tracked objects
    batched N      encode once + one segment call with N instructions + postprocess, vs N separate cold passes
"""
from __future__ import annotations

import itertools

import torch

from instructsam_tools.benchmarks.common import (
    FRAME_SIZE, INSTRUCTIONS, NUM_OBJECTS, Target, Timing, detection_kwargs, moving_shapes, run_frames, time_ms, tracking_pipeline,
)

KEYFRAME_INTERVAL = 5  # keyframe every 5th frame while timing the pipeline (each sample: 1 keyframe + 4 tracked)
BATCH_SIZES = (1, 4, 16)


def model_paths(model, repeats: int, num_objects: int = NUM_OBJECTS, encoders: bool = True) -> dict[str, Timing]:
    """Cold pass and instruction switch on cached features (model level, no tracking); with `encoders`, also
    encode_image alone and what a tracked frame encodes: encode_image(vlm=False) (SAM3's ViT only) + the tracker's
    neck (tracker_features)."""
    image = moving_shapes(1, *FRAME_SIZE)[0]
    post = detection_kwargs(num_objects)
    texts = itertools.cycle(INSTRUCTIONS)
    timings = {}
    with torch.no_grad():
        def cold():
            features = model.encode_image(image)
            model.postprocess(model.segment(features, [next(texts)]), features.original_sizes, **post)

        timings["cold"] = time_ms(cold, repeats)
        if encoders:
            timings["encode"] = time_ms(lambda: model.encode_image(image), repeats)
            # what a tracked frame encodes (FramePipeline): SAM3's ViT, then the tracker's own neck
            timings["encode_tracker_inputs"] = time_ms(
                lambda: model.tracker_features(model.encode_image(image, vlm=False), 0), repeats)
        features = model.encode_image(image)
        model.segment(features, [INSTRUCTIONS[-1]])  # fills the prefix KV cache, as the last keyframe did

        def switch():
            model.postprocess(model.segment(features, [next(texts)]), features.original_sizes, **post)

        timings["switch"] = time_ms(switch, repeats)
    return timings


def pipeline_paths(model, repeats: int, num_objects: int = NUM_OBJECTS,
                   keyframe_interval: int = KEYFRAME_INTERVAL, **settings) -> dict[str, Timing]:
    """Keyframe and tracked-frame processing time (FrameResult.processing_ms) in steady state (settings: further
    PipelineSettings)."""
    frames = moving_shapes(2 * keyframe_interval, *FRAME_SIZE)
    pipeline = tracking_pipeline(model, num_objects, keyframe_interval, **settings)
    run_frames(pipeline, frames, keyframe_interval + 1)  # first keyframe, a memory to track from, one more keyframe
    results = run_frames(pipeline, frames, keyframe_interval * max(1, repeats), start=keyframe_interval + 1)
    keyframes = [r.processing_ms for r in results if r.keyframe]
    tracked = [r.processing_ms for r in results if not r.keyframe]
    # random weights: a slot whose mask is empty at the threshold is dropped, so say how many were tracked
    return {"keyframe": Timing(keyframes), "tracked": Timing(tracked)}, len(results[-1].instances)


def run_paths(model, config: str, repeats: int) -> tuple[dict, list[Target]]:
    t = model_paths(model, repeats)
    pipeline_timings, tracked_objects = pipeline_paths(model, repeats)
    t.update(pipeline_timings)
    result = {name: timing.as_dict() for name, timing in t.items()}
    result["num_objects"] = tracked_objects
    result["keyframe_interval"] = KEYFRAME_INTERVAL
    switch_ratio = t["switch"].median / t["cold"].median
    tracked_ratio = t["tracked"].median / t["keyframe"].median
    result["ratios"] = {"switch_vs_cold": switch_ratio, "tracked_vs_keyframe": tracked_ratio}
    targets = [
        Target("paths", "instruction switch on cached features / cold pass", config, switch_ratio, 0.35,
               note=f"{t['switch'].median:.1f} ms vs {t['cold'].median:.1f} ms"),
        Target("paths", f"tracked frame / keyframe ({tracked_objects} tracked objects)", config, tracked_ratio, 0.4,
               note=f"{t['tracked'].median:.1f} ms vs {t['keyframe'].median:.1f} ms"),
    ]
    return result, targets


def run_batching(model, config: str, repeats: int, batch_sizes=BATCH_SIZES) -> tuple[dict, list[Target]]:
    """N instructions on one image in one pass vs N separate cold passes. The N separate passes are timed as N x the
    median single cold pass (the same work N times over; timing each of 16 passes would multiply the run time)."""
    image = moving_shapes(1, *FRAME_SIZE)[0]
    post = detection_kwargs(NUM_OBJECTS)
    result, targets = {}, []
    with torch.no_grad():
        def batched(n: int):
            features = model.encode_image(image)
            model.postprocess(model.segment(features, INSTRUCTIONS[:n]), features.original_sizes, **post)

        single = time_ms(lambda: batched(1), repeats)
        for n in batch_sizes:
            timing = single if n == 1 else time_ms(lambda: batched(n), repeats)
            separate = n * single.median
            ratio = timing.median / separate
            result[str(n)] = {**timing.as_dict(), "separate_ms": separate, "ratio": ratio,
                              "per_instruction_ms": timing.median / n}
            if n == max(batch_sizes):
                targets.append(Target("batching", f"{n} instructions batched / {n} separate passes", config, ratio,
                                      0.25, note=f"{timing.median:.1f} ms vs {n} x {single.median:.1f} ms"))
    return result, targets


__all__ = ["model_paths", "pipeline_paths", "run_paths", "run_batching", "NUM_OBJECTS", "BATCH_SIZES"]

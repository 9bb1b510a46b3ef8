"""Section 9: several cameras through one batched pass (FramePipeline.step_batch) vs one camera after another
(step_any), at the node's default keyframe interval, NUM_OBJECTS tracked objects per camera, 640x480 frames.

Each round every camera submits a frame; throughput = frames processed per second over whole keyframe cycles.
Fairness: the spread of the cameras' mean latencies (max / min) in the batched run.
"""
from __future__ import annotations

import time

from instructsam_tools.benchmarks.common import (
    FRAME_SIZE, INSTRUCTIONS, NODE_KEYFRAME_INTERVAL, NUM_OBJECTS, Target, moving_shapes, tracking_settings,
)

CAMERAS = (1, 2, 4)


def _pipeline(model, cameras: int):
    from instructsam.pipeline.frame_pipeline import FramePipeline

    names = [f"cam{i}" for i in range(cameras)]
    pipeline = FramePipeline(model, names, tracking_settings(NUM_OBJECTS, NODE_KEYFRAME_INTERVAL))
    for i, name in enumerate(names):
        pipeline.instructions.set(INSTRUCTIONS[i], camera=name)
    return pipeline, names


def throughput(model, cameras: int, batch: bool, rounds: int) -> dict:
    frames = [moving_shapes(2 * NODE_KEYFRAME_INTERVAL, *FRAME_SIZE, seed=i) for i in range(cameras)]
    pipeline, names = _pipeline(model, cameras)

    def one_round(t: int) -> list:
        for i, name in enumerate(names):
            pipeline.submit(name, frames[i][t % len(frames[i])])
        if batch:
            results, failures = pipeline.step_batch()
            if failures:
                raise failures[0]
            return results
        return [pipeline.step_any() for _ in names]

    for t in range(NODE_KEYFRAME_INTERVAL + 1):  # warm-up: a first keyframe, tracks, the next keyframe
        one_round(t)
    start = time.perf_counter()
    results = [r for t in range(rounds) for r in one_round(NODE_KEYFRAME_INTERVAL + 1 + t)]
    seconds = time.perf_counter() - start
    latency = {name: [r.latency_ms for r in results if r.camera == name] for name in names}
    means = [sum(v) / len(v) for v in latency.values()]
    return {"frames_per_s": len(results) / seconds, "frames": len(results),
            "latency_spread": max(means) / min(means)}


def run_cameras(model, config: str, repeats: int, counts=CAMERAS) -> tuple[dict, list[Target]]:
    rounds = NODE_KEYFRAME_INTERVAL * max(1, min(repeats, 2))
    result = {}
    for n in counts:
        seq, bat = throughput(model, n, False, rounds), throughput(model, n, True, rounds)
        result[str(n)] = {"sequential": seq, "batched": bat, "speedup": bat["frames_per_s"] / seq["frames_per_s"]}
    top = result[str(max(counts))]
    targets = [Target("cameras", f"{max(counts)} cameras: sequential / batched frame time (1 / speed-up)", config,
                      1.0 / top["speedup"], 0.667,  # a speed-up of at least 1.5
                      note=f"{top['batched']['frames_per_s']:.1f} vs {top['sequential']['frames_per_s']:.1f} frames/s")]
    return result, targets


__all__ = ["run_cameras", "CAMERAS"]

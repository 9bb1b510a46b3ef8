"""Section 4: latency and memory as K (instance queries) and the number of tracked objects grow.

K: the same random sources composed with K queries (compose, as for real checkpoints); a cold pass and an
instruction switch are timed, and the peak memory of a cold pass is measured (bytes of the tensors it allocates that
are alive at once: flops.MemoryTracker, independent of what the allocator already holds).
Tracked objects: a FramePipeline made to carry n objects; tracked-frame and keyframe times, the memory the pipeline
keeps between frames once warmed up (tracker session: memory bank, object pointers; torch tensors only, the tracks'
numpy masks add n x H x W bytes) and the peak allocated during one tracked frame.
"""
from __future__ import annotations

import gc

import torch

from instructsam_tools.benchmarks.common import FRAME_SIZE, ModelStore, Timing, moving_shapes, run_frames, tracking_pipeline
from instructsam_tools.benchmarks.flops import measure_activations
from instructsam_tools.benchmarks.paths import model_paths

KS = (4, 16, 64)
MAX_REPEATS = 3  # the sweeps time many settings: at most 3 timed cycles each keeps the run within budget
OBJECTS = (1, 2, 4, 8, 16)
KEYFRAME_INTERVAL = 3  # K T T: a keyframe and two tracked frames per timed cycle

MB = 1024 ** 2


def sweep_k(store: ModelStore, config: str, repeats: int, ks=KS) -> dict:
    out = {}
    for k in ks:
        model = store.load(config, num_queries=k)
        timings = model_paths(model, repeats, num_objects=min(4, k), encoders=False)
        image = moving_shapes(1, *FRAME_SIZE)[0]

        def cold():
            with torch.no_grad():
                features = model.encode_image(image)
                return model.segment(features, ["every mug left of the sink"])

        peak, _, _ = measure_activations(cold)
        out[str(k)] = {"cold_ms": timings["cold"].median, "switch_ms": timings["switch"].median,
                       "peak_mb": peak / MB, "params": sum(p.numel() for p in model.parameters())}
        del model
        gc.collect()
    return out


def sweep_objects(model, repeats: int, objects=OBJECTS, keyframe_interval: int = KEYFRAME_INTERVAL) -> dict:
    out = {}
    frames = moving_shapes(2 * keyframe_interval, *FRAME_SIZE)
    for n in objects:
        if n > model.config.num_queries:
            continue
        pipeline = tracking_pipeline(model, n, keyframe_interval)
        _, state, warm = measure_activations(lambda: run_frames(pipeline, frames, keyframe_interval + 1))
        results = run_frames(pipeline, frames, keyframe_interval * max(1, repeats), start=len(warm))
        # the next frame is tracked (a keyframe was the first of the timed cycle)
        peak, _, last = measure_activations(lambda: run_frames(pipeline, frames, 1, start=len(warm) + len(results)))
        tracked = Timing([r.processing_ms for r in results if not r.keyframe])
        keyframes = Timing([r.processing_ms for r in results if r.keyframe])
        out[str(n)] = {"tracked_ms": tracked.median, "keyframe_ms": keyframes.median,
                       "tracked_objects": len(results[-1].instances),
                       "tracker_frames": pipeline.stats("cam")["tracker_frames"],
                       "state_mb": state / MB, "peak_mb": peak / MB, "peak_frame_keyframe": last[0].keyframe}
        del pipeline, results
        gc.collect()
    return out


def run_scaling(store: ModelStore, config: str, repeats: int) -> dict:
    repeats = min(repeats, MAX_REPEATS)
    model = store.load(config)
    objects = sweep_objects(model, repeats)
    del model
    gc.collect()
    return {"k": sweep_k(store, config, repeats), "objects": objects,
            "default_k": ModelStore.default_k(config)}


__all__ = ["sweep_k", "sweep_objects", "run_scaling", "KS", "OBJECTS"]

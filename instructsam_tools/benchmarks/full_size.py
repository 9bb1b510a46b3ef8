"""Section 6: the full-size composition (Qwen3-VL-2B-shaped VLM + SAM3's default config) on CPU, on paper.

The model is built on the meta device and given uninitialised CPU storage (`build_shell`: ~1 s and no resident
weights, instead of ~60 s and 6 GB for random initialisation), then the real code paths run under
`flops.FlopCounter(shape_only=True)`: parameters per component, FLOPs per component for a keyframe and a tracked
frame of the real FramePipeline (640x480 frame, NUM_OBJECTS tracked objects, tracker memory filled to steady state),
for a cold pass, an instruction switch and 16 batched instructions, and the peak activation memory of each phase
(flops.MemoryTracker: bf16 tensors allocated and alive at once; the weights are listed separately, bf16 bytes per
component). From the FLOPs, the frame rate to expect on an H100 in
bf16: an **estimate on paper** (see `h100_estimate` for the assumptions).
"""
from __future__ import annotations

import time

import torch

from instructsam_tools.tiny import load_spec
from instructsam_tools.benchmarks.common import (
    FRAME_SIZE, INSTRUCTIONS, NODE_KEYFRAME_INTERVAL, NUM_OBJECTS, Target, detection_kwargs, moving_shapes,
    tracking_pipeline,
)
from instructsam_tools.benchmarks.flops import FlopCount, count_flops, measure_activations
from instructsam_tools.benchmarks.levers import DEFAULTS, LEVERS, apply_lever

FULL_CONFIG = "config/model_full.yaml"
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM, dense bf16 tensor-core peak (no sparsity)
UTILISATION = 0.40  # assumed model FLOP utilisation for these shapes (batch 1, eager)

# top-level module (as the FLOP counter names it) -> component
COMPONENTS = {
    "Qwen3VLVisionModel": "VLM vision tower",
    "Qwen3VLTextModel": "VLM language model",
    "Sam3VisionModel.backbone": "SAM3 ViT",  # keyframes: detector.get_vision_features (ViT + detector neck)
    "Sam3ViTModel": "SAM3 ViT",  # tracked frames: encode_image(vlm=False) calls the ViT alone
    "Sam3VisionModel.neck": "SAM3 detector FPN neck",
    "MLP": "query/prompt projector",
    "Sam3DetrEncoder": "SAM3 DETR encoder",
    "Sam3DetrDecoderLayer": "SAM3 DETR decoder",
    "Sam3DecoderMLP": "SAM3 DETR decoder",
    "Sam3DotProductScoring": "SAM3 DETR decoder",
    "Sam3MaskDecoder": "SAM3 mask decoder",
    "Sam3VisionNeck": "SAM3 tracker neck",
    "Conv2d": "SAM3 tracker neck",  # the tracker mask decoder's conv_s0/s1, applied by get_vision_features_for_tracker
    "Sam3TrackerVideoModel": "SAM3 tracker",
}


def build_shell(config_path=FULL_CONFIG, dtype: torch.dtype = torch.bfloat16):
    """The full composition with uninitialised weights (only shapes matter; the FLOP counter never reads them), and
    its parameters per component, counted on the meta model (to_empty unties the tied embeddings)."""
    from instructsam_tools.full_size_check import build_random, component_table

    model = build_random(load_spec(config_path), None, None, dtype, meta=True)
    params = component_table(model)
    model.to_empty(device="cpu")
    return model, params


def by_component(count: FlopCount) -> dict[str, float]:
    """GFLOPs per component (+ "other": FLOPs outside the listed modules)."""
    out: dict[str, float] = {}
    for path, name in COMPONENTS.items():
        flops = count.get(path)
        if flops:
            out[name] = out.get(name, 0.0) + flops / 1e9
    rest = count.total / 1e9 - sum(out.values())
    if abs(rest) > 1e-6:
        out["other"] = rest
    return out


def h100_estimate(keyframe_tflop: float, tracked_tflop: float, switch_tflop: float,
                  peak_tflops: float = H100_BF16_DENSE_TFLOPS, utilisation: float = UTILISATION,
                  keyframe_interval: int = NODE_KEYFRAME_INTERVAL) -> dict:
    """Time = FLOPs / (peak x utilisation). Ignores memory-bound ops, kernel launches and Python overhead (eager
    batch-1 inference often reaches well below 40 % of peak), image decoding, post-processing and transfers."""
    rate = peak_tflops * utilisation
    key_ms, tracked_ms, switch_ms = (1e3 * f / rate for f in (keyframe_tflop, tracked_tflop, switch_tflop))
    mixed_ms = (key_ms + (keyframe_interval - 1) * tracked_ms) / keyframe_interval
    return {"label": "estimate on paper", "peak_tflops": peak_tflops, "utilisation": utilisation,
            "keyframe_ms": key_ms, "tracked_ms": tracked_ms, "switch_ms": switch_ms,
            "keyframe_fps": 1e3 / key_ms, "tracked_fps": 1e3 / tracked_ms,
            "mixed_fps": 1e3 / mixed_ms, "keyframe_interval": keyframe_interval}


def _counted(fn):
    start = time.perf_counter()
    peak, _, (count, result) = measure_activations(lambda: count_flops(fn))
    return count, result, peak, time.perf_counter() - start


def run_full_size(num_objects: int = NUM_OBJECTS, warm_frames: int = 8, log=print) -> dict:
    t0 = time.perf_counter()
    model, table = build_shell()
    log(f"  full size: built the shell in {time.perf_counter() - t0:.1f} s")
    params = [{"component": name, "parameters": n, "bf16_gb": n * 2 / 1e9} for name, n in table]
    frames = moving_shapes(3, *FRAME_SIZE)
    phases: dict[str, dict] = {}

    def record(name: str, count: FlopCount, peak: int, seconds: float) -> None:
        phases[name] = {"tflop": count.total / 1e12, "components_gflop": by_component(count),
                        "activation_peak_gb": peak / 1e9, "count_seconds": seconds}
        log(f"  full size: {name}: {count.total / 1e12:.3f} TFLOP, activations {peak / 1e9:.2f} GB "
            f"({seconds:.0f} s)")

    pipeline = tracking_pipeline(model, num_objects, keyframe_interval=10 ** 6)
    camera = pipeline._camera("cam")

    def step(frame, keyframe: bool | None = None):
        result = (pipeline.submit("cam", frame), pipeline.step("cam"))[1]
        if keyframe is not None and result.keyframe != keyframe:
            raise RuntimeError(f"expected a {'keyframe' if keyframe else 'tracked frame'}")
        return result

    def fill_memory(features, frames_needed: int) -> list[float]:
        """Warm the tracker's memory to steady state on cached features: exactly the call a tracked frame makes
        after encode_image (CameraTracker.track), without re-encoding 1008 px frames, whose FLOPs never change."""
        settings, counts = pipeline.settings, []
        for _ in range(frames_needed):
            count, _, _, _ = _counted(lambda: camera.tracker.track(
                model, features, mask_threshold=settings.mask_threshold, nms_iou=settings.nms_iou,
                lost_patience=settings.lost_patience))
            counts.append(count.total / 1e12)
        return counts

    count, first, peak, seconds = _counted(lambda: step(frames[0]))
    record("first keyframe (no tracks yet)", count, peak, seconds)
    count, features, peak, seconds = _counted(lambda: model.encode_image(frames[1]))
    record("encode_image", count, peak, seconds)
    tracker_tflop = fill_memory(features, warm_frames)
    log(f"  full size: tracker step TFLOP while its memory fills: {[round(t, 3) for t in tracker_tflop]}")
    count, tracked, peak, seconds = _counted(lambda: step(frames[1], keyframe=False))
    if len(tracked.instances) != num_objects:
        raise RuntimeError(f"expected a tracked frame with {num_objects} objects, got {len(tracked.instances)}")
    record("tracked frame", count, peak, seconds)
    pipeline.update_settings(keyframe_interval=1)
    count, key, peak, seconds = _counted(lambda: step(frames[2], keyframe=True))
    record("keyframe", count, peak, seconds)

    levers = {}
    for name, changes in LEVERS.items():  # each lever's steady-state tracked frame and keyframe
        if name == DEFAULTS or "skip_unchanged" in changes:  # skipping changes nothing on moving frames
            continue
        t1 = time.perf_counter()
        pipeline.update_settings(keyframe_interval=1, **changes)
        if camera.tracker.session.image_size != model.tracker_input_size:
            # a new tracker resolution starts over on a keyframe, and its memory fills again (the session keeps the
            # checkpoint's 7 frames whatever the lever, so a memory lever reads a memory already full)
            _counted(lambda: step(frames[0], keyframe=True))
            pipeline.update_settings(keyframe_interval=10 ** 6)
            fill_memory(_counted(lambda: model.encode_image(frames[1], vlm=False))[1], model.tracker.num_maskmem + 1)
        pipeline.update_settings(keyframe_interval=10 ** 6)
        tracked_count, _, _, _ = _counted(lambda: step(frames[1], keyframe=False))
        pipeline.update_settings(keyframe_interval=1)
        key_count, _, _, _ = _counted(lambda: step(frames[2], keyframe=True))
        levers[name] = {"tracked_tflop": tracked_count.total / 1e12, "keyframe_tflop": key_count.total / 1e12,
                        **apply_lever(model, changes)}
        pipeline.update_settings(**{k: getattr(type(pipeline.settings)(), k) for k in changes})
        log(f"  full size: lever {name}: tracked {levers[name]['tracked_tflop']:.3f} TFLOP, keyframe "
            f"{levers[name]['keyframe_tflop']:.3f} TFLOP ({time.perf_counter() - t1:.0f} s)")

    post = detection_kwargs(num_objects)
    count, _, peak, seconds = _counted(lambda: model.postprocess(
        model.segment(features, [INSTRUCTIONS[0]]), features.original_sizes, **post))
    record("segment with the image prefix (first instruction on new features)", count, peak, seconds)
    count, _, peak, seconds = _counted(lambda: model.postprocess(
        model.segment(features, [INSTRUCTIONS[1]]), features.original_sizes, **post))
    record("instruction switch (prefix cached)", count, peak, seconds)
    count, _, peak, seconds = _counted(lambda: model.postprocess(
        model.segment(features, INSTRUCTIONS[:16]), features.original_sizes, **post))
    record("16 instructions batched (prefix cached)", count, peak, seconds)

    encode = phases["encode_image"]["tflop"]
    prefix_segment = phases["segment with the image prefix (first instruction on new features)"]["tflop"]
    switch = phases["instruction switch (prefix cached)"]["tflop"]
    batched16 = phases["16 instructions batched (prefix cached)"]["tflop"]
    cold = encode + prefix_segment  # FLOPs add up: a cold pass is encode_image + the first segment
    ratios = {
        "switch_vs_cold": switch / cold,
        "tracked_vs_keyframe": phases["tracked frame"]["tflop"] / phases["keyframe"]["tflop"],
        "batched16_vs_separate16": (cold - switch + batched16) / (16 * cold),
    }
    return {
        "config": FULL_CONFIG, "dtype": "bfloat16", "frame_size": list(FRAME_SIZE),
        "num_objects": num_objects, "parameters": params, "phases": phases, "cold_tflop": cold,
        "tracker_warmup_tflop": tracker_tflop, "ratios_on_paper": ratios,
        "h100": h100_estimate(phases["keyframe"]["tflop"], phases["tracked frame"]["tflop"], switch),
        "levers": {name: {**v, "h100": h100_estimate(v["keyframe_tflop"], v["tracked_tflop"], switch)}
                   for name, v in levers.items()},
        "seconds": time.perf_counter() - t0,
    }


FRAME_MS_4_CAMERAS = 1e3 / 60  # four cameras at 15 fps on one GPU: 60 frames/s


def full_size_targets(result: dict) -> list[Target]:
    """The on-paper targets at the default settings, and at each tracker_scale lever (named as not a default)."""
    phases = result["phases"]
    cases = [("default settings", phases["tracked frame"]["tflop"], phases["keyframe"]["tflop"], result["h100"])]
    cases += [(f"lever {name}, not a default", v["tracked_tflop"], v["keyframe_tflop"], v["h100"])
              for name, v in result.get("levers", {}).items() if name.startswith("scale")]
    targets = []
    for label, tracked, key, h100 in cases:
        targets += [
            Target("full_size", f"on paper: tracked frame / keyframe ({label})", "full", tracked / key, 0.35,
                   note=f"{tracked:.2f} vs {key:.2f} TFLOP"),
            Target("full_size", f"on paper: H100 ms per frame, a keyframe in 10 ({label}; 4 cameras x 15 fps need "
                   f"{FRAME_MS_4_CAMERAS:.1f})", "full", 1e3 / h100["mixed_fps"], FRAME_MS_4_CAMERAS, unit="ms",
                   note=f"{h100['mixed_fps']:.0f} frames/s"),
        ]
    return targets


__all__ = ["build_shell", "run_full_size", "h100_estimate", "by_component", "full_size_targets"]

"""Shared pieces of the benchmark sections: timing, targets, the benchmark models, frames and pipelines."""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch


CONFIGS = {"tiny": "config/model_tiny.yaml", "mid": "config/model_mid.yaml"}  # found by tiny.load_spec
INSTRUCTIONS = [
    "every mug left of the sink", "the red cup that is closest to the robot", "all tools except the hammer",
    "the largest box on the table", "both bottles", "the person next to the door", "every green object",
    "the bowl behind the plate", "all chairs", "the leftmost book", "the smallest ball", "every yellow star",
    "the cat on the chair", "all cups and bowls", "the hammer", "every object that can hold water",
]
FRAME_SIZE = (480, 640)  # (H, W) of the camera frames the paths are timed on
NUM_OBJECTS = 4  # instances per instruction: detections kept by postprocess and objects the tracker carries
NODE_KEYFRAME_INTERVAL = 10  # the node's default keyframe_interval (PipelineSettings, config/instructsam.yaml)


# ---- timing -----------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Wall-clock samples of one measured path, in milliseconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    def as_dict(self) -> dict:
        s = sorted(self.samples)
        return {"median_ms": self.median, "min_ms": s[0], "max_ms": s[-1], "repeats": len(s)}


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median-ready timings of fn() after `warmup` untimed calls. gc is run before, not during, the samples."""
    for _ in range(warmup):
        fn()
    gc.collect()
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(samples)


# ---- targets ----------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One figure beside its target. `value` <= `limit` passes (for "abs" targets, |value| <= limit)."""

    section: str
    name: str
    config: str
    value: float
    limit: float
    unit: str = "x"  # "x" for ratios, "ms", "%"
    absolute: bool = False
    note: str = ""
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        v = abs(self.value) if self.absolute else self.value
        self.verdict = "PASS" if np.isfinite(v) and v <= self.limit else "FAIL"

    @property
    def limit_text(self) -> str:
        if self.unit == "x":
            return f"≤ {self.limit:g}×"
        return f"{'±' if self.absolute else '≤ '}{self.limit:g} {self.unit}"

    @property
    def value_text(self) -> str:
        if self.unit == "x":
            return f"{self.value:.3f}×"
        if self.unit == "%" and self.absolute:
            return f"{self.value:+.2f} %"
        if self.absolute:
            return f"{self.value:+.3f} {self.unit}"
        return f"{self.value:.2f} {self.unit}"

    def as_dict(self) -> dict:
        return {**asdict(self), "limit_text": self.limit_text, "value_text": self.value_text}


# ---- models -----------------------------------------------------------------------------------------------------
class ModelStore:
    """The benchmark's random-weight checkpoints, built once into `root` with the package's own tiny builder
    (`instructsam_tools.tiny.build_tiny` takes any model yaml) and composed again for other K from the same sources."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def checkpoint(self, config: str, num_queries: int | None = None) -> Path:
        from instructsam_tools.compose import compose
        from instructsam_tools.tiny import build_tiny, load_spec

        base = self.root / config
        if not (base / "config.json").is_file():
            build_tiny(base, CONFIGS[config])
        if num_queries is None:
            return base
        spec = load_spec(CONFIGS[config])
        if num_queries == spec["instructsam"]["num_queries"]:
            return base
        out = self.root / f"{config}-k{num_queries}"
        if not (out / "config.json").is_file():
            overrides = {k: v for k, v in spec["instructsam"].items() if k != "num_queries"}
            compose(base / "sources" / "vlm", base / "sources" / "sam3", out, num_queries=num_queries,
                    overrides=overrides, seed=spec.get("seed", 0))
        return out

    def dit_checkpoint(self, config: str, variant: str) -> Path:
        """The benchmark model of `config` in DIT mode (`variant`: end_to_end or layer_wise), its weights unchanged."""
        from instructsam_tools.to_dit import to_dit

        out = self.root / f"{config}-dit-{variant}"
        if not (out / "config.json").is_file():
            to_dit(self.checkpoint(config), out, variant)
        return out

    def official_checkpoint(self, config: str) -> Path:
        """A checkpoint of `config`'s sizes in the published InstructSAM-2B layout (its facebook/sam3-style directory
        beside it), scripted to keep writing phrases (instructsam_tools.official_tiny)."""
        from instructsam_tools.official_tiny import build_official_tiny

        out = self.root / f"{config}-official"
        if not (out / "official" / "config.json").is_file():
            build_official_tiny(out, phrases=2, num_queries=self.default_k(config), config_path=CONFIGS[config])
        return out / "official"

    @staticmethod
    def default_k(config: str) -> int:
        from instructsam_tools.tiny import load_spec

        return int(load_spec(CONFIGS[config])["instructsam"]["num_queries"])

    def load(self, config: str, num_queries: int | None = None):
        from instructsam.loading import load_model

        return load_model(self.checkpoint(config, num_queries))


# ---- frames -----------------------------------------------------------------------------------------------------
def moving_shapes(num_frames: int, height: int = FRAME_SIZE[0], width: int = FRAME_SIZE[1], num_objects: int = 6,
                  seed: int = 0) -> list[np.ndarray]:
    """A short synthetic video: coloured discs and boxes drifting over a textured background (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = (np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                            np.full_like(xx, 96)], -1) * 0.6).astype(np.uint8)
    starts = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height], (num_objects, 2))
    speeds = rng.uniform(-3, 3, (num_objects, 2)) * max(height, width) / 480
    radii = rng.uniform(0.04, 0.12, num_objects) * min(height, width)
    colours = rng.integers(0, 256, (num_objects, 3), dtype=np.uint8)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        for i in range(num_objects):
            cx, cy = (starts[i] + speeds[i] * t) % [width, height]
            if i % 2:
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radii[i] ** 2
            else:
                inside = (abs(xx - cx) <= radii[i]) & (abs(yy - cy) <= 0.7 * radii[i])
            frame[inside] = colours[i]
        frames.append(frame)
    return frames


# ---- pipelines --------------------------------------------------------------------------------------------------
def detection_kwargs(max_instances: int) -> dict:
    """Post-process settings for the random-weight models: their scores sit near 0.25 and their masks overlap, so
    the default thresholds would keep nothing. Score threshold 0 and no NMS keep exactly `max_instances` slots, the
    work a real model does for that many instances."""
    return {"score_threshold": 0.0, "nms_iou": 1.0, "max_instances": max_instances}


def tracking_settings(num_objects: int, keyframe_interval: int, **settings):
    """PipelineSettings whose keyframes yield `num_objects` detections and whose tracks are never dropped (so the
    tracker carries exactly that many objects on every tracked frame). settings: further PipelineSettings (e.g.
    max_new_tokens, tracker_memory_frames)."""
    from instructsam.pipeline.frame_pipeline import PipelineSettings

    return PipelineSettings(keyframe_interval=keyframe_interval, lost_patience=10 ** 9, max_tracked=max(1, num_objects),
                            **detection_kwargs(max(1, num_objects)), **settings)


def tracking_pipeline(model, num_objects: int, keyframe_interval: int, **settings):
    """A one-camera FramePipeline with `tracking_settings`, its camera given the first benchmark instruction."""
    from instructsam.pipeline.frame_pipeline import FramePipeline

    pipeline = FramePipeline(model, ["cam"], tracking_settings(num_objects, keyframe_interval, **settings))
    pipeline.instructions.set(INSTRUCTIONS[0], camera="cam")
    return pipeline


def run_frames(pipeline, frames: list[np.ndarray], count: int, start: int = 0) -> list:
    """Feed `count` frames (cycling through `frames`) one at a time; returns the FrameResults."""
    results = []
    for i in range(count):
        pipeline.submit("cam", frames[(start + i) % len(frames)])
        result = pipeline.step("cam")
        if result is None:
            raise RuntimeError("the pipeline returned no result for a frame with an instruction set")
        results.append(result)
    return results


def set_threads(threads: int) -> int:
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


__all__ = ["CONFIGS", "INSTRUCTIONS", "FRAME_SIZE", "NUM_OBJECTS", "NODE_KEYFRAME_INTERVAL", "tracking_settings",
           "Timing", "time_ms", "Target", "ModelStore", "moving_shapes", "detection_kwargs", "tracking_pipeline",
           "run_frames", "set_threads"]

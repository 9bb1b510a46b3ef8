"""The node's ROS parameters in one table: name, default, description, allowed range, and when a change
takes effect. The node declares them from here; tests check config/instructsam.yaml and the launch file
against it.

Per camera (declared at configure, for each name in `cameras`):
    <camera>.image_topic   default "/<camera>/image_raw" (or "/<camera>/image_raw/compressed")
    <camera>.compressed    false: sensor_msgs/Image; true: sensor_msgs/CompressedImage
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instructsam.pipeline.image_decode import DEFAULT_MAX_PIXELS
from instructsam.pipeline.instructions import (
    DEFAULT_MAX_CHARS, MAX_INSTANCES_LIMIT, SCORE_THRESHOLD_RANGE, TASKS,
)

# When a new value takes effect:
RUNTIME = "runtime"      # immediately, while active (thresholds, keyframe schedule)
ACTIVATE = "activate"    # at the next activate (model loading); refused while the model is loaded
CONFIGURE = "configure"  # at the next configure (topics, QoS); refused while configured
STARTUP = "startup"      # read once when the process starts


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    when: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


PARAMS: tuple[Param, ...] = (
    # model (loaded on activate, released on deactivate)
    Param("checkpoint", "checkpoints/instructsam-tiny",
          "InstructSAM checkpoint directory; a relative path is looked up in the working directory, then the "
          "package share directory, then the repository", ACTIVATE),
    Param("sam3_checkpoint", "", "a facebook/sam3 directory, for a checkpoint in the published InstructSAM-2B layout "
          "(\"\": the one its config names); unused by other checkpoints", ACTIVATE),
    Param("device", "cpu", "torch device: cpu, cuda, cuda:<n>, or auto (cuda when available)", ACTIVATE),
    Param("dtype", "float32", "model weights dtype (auto: bfloat16 on cuda, float32 on cpu)", ACTIVATE,
          choices=("float32", "bfloat16", "float16", "auto")),
    Param("num_threads", 0, "torch CPU threads (0: torch's default)", ACTIVATE, range=(0, 256)),
    # inputs and outputs
    Param("cameras", ["camera"], "camera names; each gets <name>.image_topic and <name>.compressed", CONFIGURE),
    Param("image_qos.depth", 1, "queue depth of the image subscriptions (1: only the newest frame)", CONFIGURE,
          range=(1, 100)),
    Param("image_qos.reliability", "auto",
          "image subscriptions: auto (the publishers' own: reliable when every publisher is, so large frames "
          "arrive whole; re-checked as publishers come and go), best_effort (matches any camera) or reliable",
          CONFIGURE, choices=("auto", "best_effort", "reliable")),
    Param("publish_overlay", False, "also publish <camera>/overlay (rgb8: masks, ids, instruction) for rviz",
          CONFIGURE),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages", CONFIGURE, range=(0.1, 60.0)),
    Param("max_instruction_chars", DEFAULT_MAX_CHARS, "longer instructions are rejected", CONFIGURE,
          range=(1, 1_000_000)),
    Param("max_image_pixels", DEFAULT_MAX_PIXELS,
          "larger images (width x height) are refused before decoding", RUNTIME, range=(1, 1 << 31)),
    # the frame pipeline (instructsam.pipeline.frame_pipeline.PipelineSettings), changeable while running
    Param("default_task", "referring", "instruction template when an instruction names none", RUNTIME,
          choices=TASKS),
    Param("keyframe_interval", 10, "run the detector every N processed frames (0: every frame)", RUNTIME,
          range=(0, 100_000)),
    Param("keyframe_seconds", 0.0, "also run the detector when this many seconds passed (0: off)", RUNTIME,
          range=(0.0, 3600.0)),
    Param("score_threshold", -1.0, "instances scoring lower are not reported (-1: the checkpoint's own "
          "threshold, calibrated on validation data)", RUNTIME, range=SCORE_THRESHOLD_RANGE),
    Param("mask_threshold", 0.35, "mask probability above which a pixel belongs to the instance", RUNTIME,
          range=(0.0, 1.0)),
    Param("nms_iou", 0.5, "IoU above which the lower-scoring of two instances is suppressed", RUNTIME,
          range=(0.0, 1.0)),
    Param("max_instances", 20, "at most this many detections per keyframe", RUNTIME,
          range=(1, MAX_INSTANCES_LIMIT)),
    Param("max_tracked", 20, "at most this many tracks per camera (the tracker's cost grows with it)", RUNTIME,
          range=(1, 1000)),
    Param("match_iou", 0.3, "mask IoU from which a keyframe detection continues an existing track", RUNTIME,
          range=(0.0, 1.0)),
    Param("lost_patience", 15, "processed frames a lost track keeps its id before it is dropped", RUNTIME,
          range=(0, 100_000)),
    Param("max_new_tokens", 64, "models that write an answer first (the published InstructSAM-2B): at most this "
          "many tokens per keyframe", RUNTIME, range=(1, 4096)),
    Param("tracker_memory_frames", 4, "past frames SAM3's tracker reads through memory attention (0: the "
          "checkpoint's own, 7 for SAM3; fewer cost less; 4 tracks as well as 7 in BENCHMARKS.md section 10)",
          RUNTIME, range=(0, 64)),
    Param("tracker_scale", 1.0, "SAM3's tracker, and the ViT pass a tracked frame runs, at this times the "
          "detector's token grid (1: the same; smaller costs less and tracks less well, BENCHMARKS.md section 10)",
          RUNTIME, range=(0.05, 1.0)),
    Param("skip_unchanged", 0.0, "a tracked frame whose 8x8-pixel block means all differ by less than this many "
          "grey levels from the camera's last processed frame repeats its instances without model work (0: off; "
          "for static cameras, BENCHMARKS.md section 10)", RUNTIME, range=(0.0, 255.0)),
    Param("batch_cameras", False, "encode the waiting frames of all cameras in one batched pass per round "
          "(keyframes together, tracked frames together); BENCHMARKS.md section 9 has what it gains", RUNTIME),
    # process
    Param("autostart", True, "configure and activate at startup (false: wait for lifecycle transitions)",
          STARTUP),
)
BY_NAME = {p.name: p for p in PARAMS}
# Parameters the node hands to the frame pipeline (PipelineSettings fields of the same name).
PIPELINE_SETTINGS = ("default_task", "keyframe_interval", "keyframe_seconds", "score_threshold", "mask_threshold",
                     "nms_iou", "max_instances", "max_tracked", "match_iou", "lost_patience",
                     "max_instruction_chars", "max_new_tokens", "batch_cameras", "tracker_memory_frames",
                     "tracker_scale", "skip_unchanged")


def camera_param_defaults(camera: str) -> dict[str, Any]:
    return {f"{camera}.compressed": False, f"{camera}.image_topic": ""}


def default_image_topic(camera: str, compressed: bool) -> str:
    return f"/{camera}/image_raw/compressed" if compressed else f"/{camera}/image_raw"


__all__ = ["Param", "PARAMS", "BY_NAME", "PIPELINE_SETTINGS", "RUNTIME", "ACTIVATE", "CONFIGURE", "STARTUP",
           "camera_param_defaults", "default_image_topic"]

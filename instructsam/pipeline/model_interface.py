"""What the frame pipeline uses of a model, declared: InstructSAMModel implements it, and anything else that does
(a model behind another runtime, a wrapper batching cameras) drives FramePipeline and the tracker unchanged.
tests/test_pipeline_model_interface.py checks from the source that the pipeline uses nothing else.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from instructsam.outputs import ImageFeatures, InstanceSetOutput, Prediction
from instructsam.prompting import PromptBuilder, TokenizedInstructions


@runtime_checkable
class PipelineModel(Protocol):
    device: torch.device
    prompts: PromptBuilder  # encode(): the instruction's tokens, also its check when it arrives
    tracker: Any  # SAM3's tracker module: config (memory sizes), dtype
    tracker_input_size: int  # the square input size the tracker runs at (its mask prompts' size)

    def encode_image(self, images, vlm: bool = True) -> ImageFeatures:
        """Features of a frame, computed once; vlm=False: only what the tracker reads (tracked frames)."""

    def segment(self, features: ImageFeatures, instructions: list[str], *, task: str | None = None,
                tokens: TokenizedInstructions | None = None, max_new_tokens: int | None = None) -> InstanceSetOutput:
        """The instance slots of each instruction on the features (a keyframe's detection); a model that writes an
        answer first (reference mode) bounds it by max_new_tokens and returns it in `answers`."""

    def postprocess(self, output: InstanceSetOutput, original_sizes: list[tuple[int, int]], *,
                    score_threshold: float | None, mask_threshold: float, nms_iou: float,
                    max_instances: int) -> list[Prediction]:
        """Slots -> masks, boxes and scores at the frame's resolution."""

    def tracker_features(self, features: ImageFeatures, index: int = 0) -> dict:
        """The tracker's inputs for image `index` of the features (to cache in the tracker session)."""

    def run_tracker(self, session, frame_idx: int) -> Any:
        """SAM3's tracker on a frame whose features the session has cached."""

    def set_tracker_scale(self, scale: float) -> int:
        """The tracker (and a tracked frame's encoding) at scale x the detector's token grid; returns its input
        size (tracker_input_size)."""


__all__ = ["PipelineModel"]

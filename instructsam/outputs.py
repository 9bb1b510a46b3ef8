"""What the model hands out: cached image features, the K-slot instance set, and post-processed predictions.

`Prediction` is the contract evaluation and the frame pipeline consume (masks at the original resolution).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.modeling_outputs import ModelOutput
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput


@dataclass
class ImageFeatures:
    """Everything computed from M images once, reused by every instruction (and by SAM3's tracker).

    vlm_image_embeds: (M, T, d_vlm) merged vision tokens that replace `<|image_pad|>` in the VLM.
    vlm_deepstack: per deepstack layer, (M, T, d_vlm) features Qwen3-VL adds to the image tokens' hidden states.
    vlm_grid_thw: (M, 3) patch grid per image (needed for Qwen3-VL's 3D rope positions).
    sam3: SAM3 vision output (ViT last_hidden_state + FPN features and their position encodings), batch M.
    original_sizes: (height, width) of each input image.
    tracker_vision: SAM3's ViT output at the tracker's smaller input, when the model tracks at a lower resolution
        (InstructSAMModel.set_tracker_scale); the tracker then reads it instead of `sam3`.
    tracker: per image index, SAM3-tracker inputs derived from `sam3` (filled by
        `InstructSAMModel.tracker_features`), so the tracker never re-runs the ViT.
    prefix_cache: the VLM's KV cache of the image prefix, filled by the first no-grad `segment` call and reused
        by later ones on the same features (an instruction switch then skips the image tokens).
    """

    vlm_image_embeds: torch.Tensor | None  # None when encoded with vlm=False (tracking-only frames)
    vlm_deepstack: list[torch.Tensor] | None
    vlm_grid_thw: torch.Tensor | None
    sam3: Sam3VisionEncoderOutput
    original_sizes: list[tuple[int, int]]
    tracker: dict[int, dict[str, list[torch.Tensor]]] = field(default_factory=dict)
    prefix_cache: object | None = None
    sam3_pixels: torch.Tensor | None = None  # DIT mode's keyframes: SAM3's input, re-encoded with each instruction
    tracker_vision: Sam3VisionEncoderOutput | None = None  # ViT output at the tracker's smaller input (None: `sam3`)

    def __len__(self) -> int:
        return len(self.original_sizes)

    def image(self, i: int) -> "ImageFeatures":
        """The features of image `i` alone (views, no copy): what one camera's frame of a batched encode gets."""
        from instructsam.sam3_queries import select_vision

        one = slice(i, i + 1)
        pick = (lambda t: None if t is None else t[one])

        def vision(v):  # the batch's SAM3 vision output (possibly empty, or absent) at image i
            if v is None or v.last_hidden_state is None:
                return v
            return select_vision(v, torch.tensor([i], device=v.last_hidden_state.device))

        return ImageFeatures(
            vlm_image_embeds=pick(self.vlm_image_embeds),
            vlm_deepstack=None if self.vlm_deepstack is None else [d[one] for d in self.vlm_deepstack],
            vlm_grid_thw=pick(self.vlm_grid_thw),
            sam3=vision(self.sam3), original_sizes=self.original_sizes[one], sam3_pixels=pick(self.sam3_pixels),
            tracker_vision=vision(self.tracker_vision))


@dataclass
class InstanceSetOutput(ModelOutput):
    r"""
    Per instruction, K instance slots (N instructions).

    mask_logits: (N, K, h, w) mask logits at SAM3's mask resolution (h = w = image_size / 3.5 for patch 14),
        over the square model input (the whole image, stretched).
    boxes: (N, K, 4) **normalised xyxy** relative to the image (multiply x by W and y by H for pixels); like
        SAM3's pred_boxes they come from a cxcywh in (0, 1) and are not clamped (postprocess clamps).
    scores: (N, K) probability per slot *including presence*: sigmoid(logits) * sigmoid(presence_logits).
    logits: (N, K) per-slot classification logits (before presence).
    presence_logits: (N,) SAM3 presence-token logit (is any target present?); presence = its sigmoid.
    aux_boxes / aux_logits: (L, N, K, 4) / (L, N, K) per DETR-decoder layer, for auxiliary losses.
    aux_presence_logits: (L, N) per decoder layer.
    reference_boxes: (N, K, 4) the reference boxes (cxcywh) the projector gave each slot.
    semantic_seg: (N, 1, h, w) SAM3's semantic-segmentation head.
    query_states: (N, K, d_vlm) final VLM states of the query tokens.
    image_index: (N,) which image of the features each instruction ran on.
    denoise_mask_logits / denoise_boxes / denoise_logits: (N, M, h, w) / (N, M, 4) / (N, M), training only: the
        detector's outputs for M denoising queries placed at given (noised ground-truth) boxes (see `segment`).
    answers / phrases: reference mode only: per instruction the text the VLM wrote, and the target phrases in it
        (its n phrases give the instruction n * K slots; presence_logits is None there).
    """

    mask_logits: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    presence_logits: torch.Tensor | None = None
    presence: torch.Tensor | None = None
    aux_boxes: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None
    aux_presence_logits: torch.Tensor | None = None
    reference_boxes: torch.Tensor | None = None
    semantic_seg: torch.Tensor | None = None
    query_states: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    denoise_mask_logits: torch.Tensor | None = None
    denoise_boxes: torch.Tensor | None = None
    denoise_logits: torch.Tensor | None = None
    answers: list[str] | None = None
    phrases: list[list[str]] | None = None


@dataclass
class Prediction:
    """The instance set for one (image, instruction), at the original image resolution.

    masks: (M, H, W) bool; scores: (M,) float32; boxes: (M, 4) float32 xyxy in pixels. M may be 0.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores).reshape(-1)
        self.boxes = np.asarray(self.boxes).reshape(-1, 4)
        m = len(self.scores)
        if self.masks.ndim != 3 or len(self.masks) != m or self.boxes.shape != (m, 4):
            raise ValueError(f"inconsistent prediction: masks {self.masks.shape}, scores {self.scores.shape}, "
                             f"boxes {self.boxes.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, height: int, width: int) -> "Prediction":
        """No instance (e.g. a no-target instruction) for an image of the given size."""
        return cls(masks=np.zeros((0, height, width), dtype=bool), scores=np.zeros((0,), dtype=np.float32),
                   boxes=np.zeros((0, 4), dtype=np.float32))


__all__ = ["ImageFeatures", "InstanceSetOutput", "Prediction"]

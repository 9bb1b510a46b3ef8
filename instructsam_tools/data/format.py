"""The in-memory unit every loader yields and every trainer/evaluator consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InstructionSample:
    """One (image, instruction) pair with the set of instances it refers to (possibly empty)."""

    image_id: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    instruction_id: str
    text: str
    task: str = "referring"  # template family: referring / reasoning / multi_instance / video
    family: str = ""  # instruction family for per-family breakdowns ("" if unknown)
    target_ids: list[int] = field(default_factory=list)  # annotation ids of the targets
    masks: np.ndarray | None = None  # (N, H, W) bool
    boxes: np.ndarray | None = None  # (N, 4) xyxy float32, pixels
    # the image's other annotated objects, which the instruction does not target (M may be 0 when unknown):
    # training can supervise every object's mask and box and teach the score to select the targets among them
    other_masks: np.ndarray | None = None  # (M, H, W) bool
    other_boxes: np.ndarray | None = None  # (M, 4) xyxy float32, pixels

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        for masks, boxes in (("masks", "boxes"), ("other_masks", "other_boxes")):
            if getattr(self, masks) is None:
                setattr(self, masks, np.zeros((0, h, w), dtype=bool))
            if getattr(self, boxes) is None:
                setattr(self, boxes, np.zeros((0, 4), dtype=np.float32))
            m, b = getattr(self, masks), getattr(self, boxes)
            if m.shape[1:] != (h, w) or len(m) != len(b):
                raise ValueError(f"sample {self.instruction_id}: {masks} {m.shape} / {boxes} {b.shape} "
                                 f"do not match image {self.image.shape}")

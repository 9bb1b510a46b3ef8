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

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        if self.masks is None:
            self.masks = np.zeros((0, h, w), dtype=bool)
        if self.boxes is None:
            self.boxes = np.zeros((0, 4), dtype=np.float32)
        if self.masks.shape[1:] != (h, w) or len(self.masks) != len(self.boxes):
            raise ValueError(
                f"sample {self.instruction_id}: masks {self.masks.shape} / boxes {self.boxes.shape} "
                f"do not match image {self.image.shape}")

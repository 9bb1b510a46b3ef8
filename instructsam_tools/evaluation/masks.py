"""Mask helpers shared by the metrics: COCO RLE encoding and IoU matrices (via pycocotools)."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from instructsam.rle import encode_rle


def encode(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> N compressed COCO RLEs (counts as bytes, as pycocotools wants them)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    h, w = masks.shape[1:]
    return [{"size": [h, w], "counts": encode_rle(m).encode("ascii")} for m in masks]


def iou_matrix(a: list[dict], b: list[dict]) -> np.ndarray:
    """IoU between every RLE in `a` and every RLE in `b`: shape (len(a), len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def as_bool(masks: np.ndarray, name: str) -> np.ndarray:
    """bool (or 0/1 integer) masks as bool; float masks are refused: they need a threshold first."""
    masks = np.asarray(masks)
    if masks.dtype != bool and not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{name}: expected bool masks, got {masks.dtype} (binarise them first)")
    return masks.astype(bool, copy=False)


def check_masks(masks: np.ndarray, name: str) -> np.ndarray:
    """Return masks as a (N, H, W) bool array, or raise naming what was wrong."""
    masks = as_bool(masks, name)
    if masks.ndim != 3:
        raise ValueError(f"{name}: expected shape (N, H, W), got {masks.shape}")
    return masks

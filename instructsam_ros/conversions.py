"""Conversions between the package's messages and numpy masks (COCO RLE via pycocotools)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from instructsam_ros.msg import InstanceMask, InstanceMaskArray

STATE_NAMES = {
    InstanceMask.STATE_NEW: "new",
    InstanceMask.STATE_TRACKED: "tracked",
    InstanceMask.STATE_LOST: "lost",
}
STATE_CODES = {name: code for code, name in STATE_NAMES.items()}


def encode_mask(mask: np.ndarray) -> tuple[str, list[float]]:
    """(H, W) bool mask -> (compressed COCO RLE counts, [x, y, w, h] box)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return rle["counts"].decode("ascii"), [float(v) for v in mask_utils.toBbox(rle)]


def decode_mask(msg: InstanceMask) -> np.ndarray:
    """InstanceMask -> (H, W) bool mask."""
    rle = {"size": [int(msg.mask_height), int(msg.mask_width)], "counts": msg.rle_counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def make_instance(track_id: str, score: float, state: str | int, mask: np.ndarray) -> InstanceMask:
    counts, box = encode_mask(mask)
    return InstanceMask(
        id=str(track_id), score=float(score),
        state=STATE_CODES[state] if isinstance(state, str) else int(state),
        bbox=np.asarray(box, dtype=np.float32),
        mask_height=int(mask.shape[0]), mask_width=int(mask.shape[1]), rle_counts=counts,
    )


def make_instance_array(
    header, camera: str, height: int, width: int, instruction_id: str, instruction: str,
    instances: Iterable[InstanceMask], **timing,
) -> InstanceMaskArray:
    return InstanceMaskArray(
        header=header, camera=camera, height=int(height), width=int(width),
        instruction_id=instruction_id, instruction=instruction, instances=list(instances), **timing,
    )


def decode_masks(msg: InstanceMaskArray) -> np.ndarray:
    """All masks of an InstanceMaskArray as one (N, H, W) bool array (N may be 0)."""
    masks: Sequence[np.ndarray] = [decode_mask(inst) for inst in msg.instances]
    if not masks:
        return np.zeros((0, int(msg.height), int(msg.width)), dtype=bool)
    return np.stack(masks)

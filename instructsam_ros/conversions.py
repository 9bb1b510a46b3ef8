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
    """(H, W) bool mask -> (compressed COCO RLE counts, [x, y, w, h] box); the same string as
    `pycocotools.mask.encode(np.asfortranarray(mask))`, about 5x faster on a 640x480 instance mask.

    COCO RLE runs down the columns. Copying the whole mask into that (Fortran) order was most of the cost of a
    message (benchmarks: node overhead), so only the columns that hold the mask are transposed and run-length
    coded here; the all-zero columns left and right of them become part of the first and last zero runs, and
    pycocotools compresses the counts."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    cols = np.flatnonzero(mask.any(axis=0))
    if len(cols) == 0:
        counts = [h * w]
    else:
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        flat = np.ascontiguousarray(mask[:, x0:x1].T).reshape(-1).astype(bool, copy=False)
        edges = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
        runs = np.diff(edges)
        if flat[0]:  # RLE counts start with a (possibly empty) run of zeros
            runs = np.concatenate(([0], runs))
        runs[0] += x0 * h
        if not flat[-1]:
            runs[-1] += (w - x1) * h
        elif x1 < w:
            runs = np.concatenate((runs, [(w - x1) * h]))
        counts = runs.tolist()
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
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

"""Draw an instance set on its image: masks (one colour per track id), boxes, ids, scores and the
instruction. Shared by the ROS node's overlay topic, the demo GIF and the bag evaluator (numpy in,
numpy out; no ROS types)."""
from __future__ import annotations

import colorsys
import zlib
from typing import Any, Iterable

import cv2
import numpy as np

LOST_COLOUR = (160, 160, 160)


def track_colour(track_id: str) -> tuple[int, int, int]:
    """A bright RGB colour that is the same for a track id in every frame and every run."""
    hue = (zlib.crc32(str(track_id).encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _box_of(instance: Any) -> tuple[int, int, int, int] | None:
    box = getattr(instance, "box", None)
    if box is not None and len(box) == 4 and float(box[2]) > float(box[0]) and float(box[3]) > float(box[1]):
        return tuple(int(round(float(v))) for v in box)
    mask = getattr(instance, "mask", None)
    if mask is None or not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def draw_overlay(image: np.ndarray, instances: Iterable[Any], instruction: str = "",
                 alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 RGB image + instances (objects with id, score, state, mask (H, W) bool, box xyxy)
    -> a new (H, W, 3) uint8 RGB image. Lost instances (no mask this frame) get a grey box and label."""
    out = np.array(image, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    scale = max(0.35, min(height, width) / 800)
    thickness = max(1, int(round(scale * 2)))
    labels = []
    for inst in instances:
        lost = getattr(inst, "state", "") == "lost"
        colour = LOST_COLOUR if lost else track_colour(inst.id)
        mask = getattr(inst, "mask", None)
        if mask is not None and mask.shape == (height, width) and mask.any():
            out[mask] = (out[mask] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thickness)
        box = _box_of(inst)
        if box is not None:
            cv2.rectangle(out, box[:2], (box[2] - 1, box[3] - 1), colour, thickness)
            state = f" {inst.state}" if getattr(inst, "state", "") in ("new", "lost") else ""
            labels.append((f"{inst.id} {float(inst.score):.2f}{state}", box, colour))
    for text, box, colour in labels:  # labels last, so masks never cover them
        _label(out, text, (box[0], box[1]), colour, scale)
    if instruction:
        _label(out, _fit(instruction, width, scale), (0, 0), (255, 255, 255), scale, below=True)
    return out


def draw_result(image: np.ndarray, result: Any, alpha: float = 0.5) -> np.ndarray:
    """draw_overlay for a FrameResult (its instances and the text of its instruction)."""
    instruction = getattr(getattr(result, "instruction", None), "text", "") or ""
    return draw_overlay(image, result.instances, instruction, alpha)


def _fit(text: str, width: int, scale: float) -> str:
    """Shorten to the image width; OpenCV's Hershey fonts only draw ASCII, so other characters become '?'."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in " ".join(text.split()))
    max_chars = max(4, int(width / (20 * scale)))
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


def _label(img: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int], scale: float,
           below: bool = False) -> None:
    """Text on a dark background at `corner` (above it, or below it when `below` or at the top edge)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    x, y = corner
    top = y if below or y - th - base - 2 < 0 else y - th - base - 2
    x = max(0, min(x, img.shape[1] - tw - 2))
    cv2.rectangle(img, (x, top), (x + tw + 2, top + th + base + 2), (0, 0, 0), -1)
    cv2.putText(img, text, (x + 1, top + th + 1), font, scale, colour, 1, cv2.LINE_AA)


__all__ = ["track_colour", "draw_overlay", "draw_result"]

"""K slots -> the instance set at the input resolution: score threshold, NMS, max instances, mask threshold."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from instructsam.outputs import InstanceSetOutput, Prediction


def postprocess_instance_sets(output: InstanceSetOutput, original_sizes: list[tuple[int, int]],
                              score_threshold: float, mask_threshold: float, nms_iou: float,
                              max_instances: int, crop_masks_to_boxes: bool = False) -> list[Prediction]:
    """One Prediction per instruction of `output`.

    original_sizes: (H, W) per *image* of the features the output was computed on (`ImageFeatures.original_sizes`);
        instruction n uses original_sizes[output.image_index[n]].
    score_threshold: keep slots whose score (presence included) is >= this.
    nms_iou: box-IoU above which the lower-scoring of two kept slots is dropped (torchvision NMS); >= 1 disables.
    mask_threshold: binarise sigmoid(mask logits) upsampled to the original size at this probability.
    crop_masks_to_boxes: zero each mask outside its box grown by 1 px.
    Slots whose mask is empty after binarisation are dropped. Results are sorted by score, highest first.
    """
    image_index = output.image_index.tolist() if output.image_index is not None else [0] * len(output.scores)
    if max(image_index) >= len(original_sizes):
        raise ValueError(f"original_sizes has {len(original_sizes)} entries but the output refers to image "
                         f"{max(image_index)}; pass the features' original_sizes (one per image)")
    results = []
    for n, img in enumerate(image_index):
        h, w = (int(v) for v in original_sizes[img])
        scores = output.scores[n].detach().float()
        keep = torch.nonzero(scores >= score_threshold).flatten()
        boxes = output.boxes[n, keep].detach().float() * torch.tensor([w, h, w, h], dtype=torch.float32,
                                                                         device=scores.device)
        kept_scores = scores[keep]
        if len(keep) and nms_iou < 1.0:
            order = nms(boxes, kept_scores, nms_iou)  # returns indices sorted by decreasing score
        else:
            order = torch.argsort(kept_scores, descending=True)
        order = order[:max_instances]
        keep, boxes, kept_scores = keep[order], boxes[order], kept_scores[order]
        if len(keep):
            logits = output.mask_logits[n, keep].detach().float()[None]
            probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0].sigmoid()
            masks = probs > mask_threshold
            if crop_masks_to_boxes:
                masks &= _inside_boxes(boxes, h, w, pad=1.0)
            nonempty = masks.flatten(1).any(dim=1)
            masks, boxes, kept_scores = masks[nonempty], boxes[nonempty], kept_scores[nonempty]
        else:
            masks = torch.zeros((0, h, w), dtype=torch.bool)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        results.append(Prediction(masks=masks.cpu().numpy(), scores=kept_scores.cpu().numpy().astype(np.float32),
                                  boxes=boxes.cpu().numpy().astype(np.float32)))
    return results


def _inside_boxes(boxes: torch.Tensor, h: int, w: int, pad: float) -> torch.Tensor:
    """(M, 4) xyxy pixel boxes -> (M, h, w) bool: pixel centres within each box grown by `pad`."""
    ys = torch.arange(h, dtype=torch.float32, device=boxes.device)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=boxes.device)[None, None, :] + 0.5
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x1 - pad) & (xs <= x2 + pad) & (ys >= y1 - pad) & (ys <= y2 + pad)


__all__ = ["postprocess_instance_sets"]

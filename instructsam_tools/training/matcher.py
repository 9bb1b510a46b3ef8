"""Hungarian matching between the K predicted instance slots and the T targets of each (image, instruction).

As DETR's `models/matcher.py`: a weighted cost matrix (classification, mask BCE, mask Dice, box L1, box GIoU) per
sample, solved with `scipy.optimize.linear_sum_assignment`. Mask costs are computed on a downsampled grid (default
32 x 32) so matching stays cheap at SAM3's full mask resolution (288 x 288).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou


def target_labels(target: dict) -> torch.Tensor:
    """(T,) float labels of a target dict: 1 = the instruction's target, 0 = another annotated object (all 1 when
    the dict has no "labels")."""
    labels = target.get("labels")
    return torch.ones(len(target["boxes"])) if labels is None else labels.float()


def get_field(outputs, name: str):
    """`outputs[name]` for a dict or an attribute of an InstanceSetOutput; None if absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W) bool/float masks -> (T, h, w) float coverage in [0, 1] (area interpolation).

    The model sees the whole image stretched to a square, so the full mask resized to (h, w) is the target."""
    masks = masks.float()
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if len(masks) == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None], size=size, mode="area")[0]


def focal_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Deformable-DETR's classification cost per slot: focal loss if positive minus focal loss if negative."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -F.logsigmoid(-logits)
    pos = alpha * (1 - prob).pow(gamma) * -F.logsigmoid(logits)
    return pos - neg


def pairwise_mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K, P) logits x (T, P) targets -> (K, T) mean sigmoid cross-entropy (Mask2Former's batch_sigmoid_ce_loss)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K, P) logits x (T, P) targets -> (K, T) Dice loss, 1 - (2|p t| + 1) / (|p| + |t| + 1)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predicted slots to targets, per sample.

    outputs: InstanceSetOutput (or dict) with logits (N, K), boxes (N, K, 4) normalised xyxy and optionally
        mask_logits (N, K, h, w) (absent for auxiliary decoder layers: their cost has no mask terms).
    targets: N dicts with "boxes" (T, 4) normalised xyxy, "masks" (T, H, W) (bool or float; resized to the
        cost grid here) and optionally "labels" (T,): 1 for the instruction's targets, 0 for other objects of the
        image, which a slot should cover with a *low* score (their class cost is reversed).
    Returns N (slot_indices, target_indices) int64 pairs, min(K, T) long each; T = 0 gives an empty match.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 cost_bbox: float = 5.0, cost_giou: float = 2.0, mask_cost_size: int = 32,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if min(cost_class, cost_mask, cost_dice, cost_bbox, cost_giou) < 0:
            raise ValueError("matcher costs must be >= 0")
        if cost_class == cost_mask == cost_dice == cost_bbox == cost_giou == 0:
            raise ValueError("all matcher costs are 0: the assignment would be arbitrary")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.cost_bbox, self.cost_giou = cost_bbox, cost_giou
        self.mask_cost_size = mask_cost_size
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def cost_matrices(self, outputs, targets: list[dict]) -> list[torch.Tensor]:
        """The (K, T) cost matrix of every sample (exposed for tests and debugging)."""
        logits = get_field(outputs, "logits").float()
        boxes = get_field(outputs, "boxes").float()
        mask_logits = get_field(outputs, "mask_logits")
        use_masks = mask_logits is not None and (self.cost_mask > 0 or self.cost_dice > 0)
        if len(targets) != len(logits):
            raise ValueError(f"{len(targets)} targets for {len(logits)} predicted instance sets")
        if use_masks:
            side = min(self.mask_cost_size, mask_logits.shape[-1])
            grid = (side, side) if mask_logits.shape[-1] == mask_logits.shape[-2] else tuple(mask_logits.shape[-2:])
            pred_masks = mask_logits.float()
            if tuple(pred_masks.shape[-2:]) != grid:
                pred_masks = F.interpolate(pred_masks, size=grid, mode="bilinear", align_corners=False)
            pred_masks = pred_masks.flatten(2)
        costs = []
        for n, target in enumerate(targets):
            tgt_boxes = target["boxes"].to(boxes.device, torch.float32)
            if len(tgt_boxes) == 0:
                costs.append(boxes.new_zeros((logits.shape[1], 0)))
                continue
            positive = target_labels(target).to(boxes.device)[None, :] > 0.5
            class_cost = focal_cost(logits[n], self.focal_alpha, self.focal_gamma)[:, None]
            c = self.cost_class * torch.where(positive, class_cost, -class_cost)
            c = c + self.cost_bbox * torch.cdist(boxes[n], tgt_boxes, p=1)
            c = c - self.cost_giou * generalized_box_iou(boxes[n], tgt_boxes)
            if use_masks:
                tgt = resize_masks(target["masks"].to(pred_masks.device), grid).flatten(1)
                c = c + self.cost_mask * pairwise_mask_bce(pred_masks[n], tgt)
                c = c + self.cost_dice * pairwise_dice(pred_masks[n], tgt)
            costs.append(c)
        return costs

    @torch.no_grad()
    def forward(self, outputs, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        indices = []
        for n, c in enumerate(self.cost_matrices(outputs, targets)):
            if c.shape[1] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(c).all():
                raise ValueError(f"non-finite matching cost for sample {n}: the model produced NaN/inf outputs "
                                 f"(diverged training? lower the learning rate)")
            rows, cols = linear_sum_assignment(c.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, mask_cost_size={self.mask_cost_size}")


__all__ = ["HungarianMatcher", "get_field", "target_labels", "resize_masks", "focal_cost", "pairwise_mask_bce",
           "pairwise_dice"]

"""The set-prediction loss (DETR's SetCriterion): Hungarian-match slots to targets, then supervise

    class      every slot's logit: matched to a target = 1, unmatched (or matched to another object) = 0;
               sigmoid focal loss or BCE
    presence   the presence logit: 1 iff the (image, instruction) has any target. This is what teaches a
               no-target instruction to predict the empty set (the score is sigmoid(logit) * presence).
    mask, dice matched slots' mask logits vs their objects' masks (sigmoid BCE + Dice)
    bbox, giou matched slots' normalised xyxy boxes (L1 + generalized IoU)
    semantic   SAM3's semantic-segmentation head vs the union of the targets (BCE + Dice; empty for a no-target
               instruction): dense, matching-free supervision of the prompt-conditioned pixel features, as SAM3
               trains it. Skipped when the output has no semantic_seg or its weight is 0.

With denoising queries in the output (`denoise_*`, see denoising.py) query i of sample n is supervised against
object i of its target (mask, dice, bbox, giou as above; class = the object's label) as `loss_<term>_dn`.

With `detect_all` the slots are matched to every annotated object of the image (targets labelled 1, the other
objects 0: a target dict's "labels"), so masks and boxes are supervised on all objects whatever the instruction
asks, and the score alone must select the instruction's targets among them: mask and box learning no longer waits
for the instruction to be understood. Without it the other objects are dropped (DETR's targets-only matching).

The class / presence / box terms are added again on every earlier DETR-decoder layer (auxiliary losses, re-matched per
layer without mask costs, as DETR re-matches each layer). Losses over targets are normalised by the number of
targets in the global batch (averaged over DDP ranks), as DETR does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from instructsam_tools.training.matcher import HungarianMatcher, get_field, resize_masks, target_labels

DEFAULT_WEIGHTS = {"class": 2.0, "presence": 2.0, "mask": 5.0, "dice": 5.0, "bbox": 5.0, "giou": 2.0,
                   "semantic": 1.0}


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M, P) logits vs (M, P) targets -> (M,) Dice loss."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def global_num_targets(targets: list[dict], device: torch.device) -> float:
    """Targets in the batch, averaged over DDP ranks (so every rank normalises alike), at least 1."""
    n = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n), 1.0)


def only_targets(target: dict) -> dict:
    """A target dict without the other annotated objects (labels 0)."""
    keep = target_labels(target) > 0.5
    if bool(keep.all()):
        return target
    return {k: (v[keep.to(v.device)] if k in ("masks", "boxes", "labels") else v) for k, v in target.items()}


class SetCriterion(nn.Module):
    """Losses for InstanceSetOutput against per-sample targets.

    targets: N dicts with "boxes" (T, 4) normalised xyxy and "masks" (T, H, W) bool/float (resized here to the
        output's mask resolution by area interpolation, which keeps small objects' coverage).
    weights: per-term weights (keys of DEFAULT_WEIGHTS); the auxiliary layers use the same weights.
    class_loss: "focal" (sigmoid focal loss normalised by the number of targets, as Deformable DETR) or "bce"
        (mean binary cross-entropy over all slots).
    aux_loss: add class / presence / box losses for each earlier decoder layer when the output has them.
    detect_all: match slots to the other annotated objects too (see the module docstring).
    Returns a dict of unweighted terms (`loss_class`, ..., `loss_class_aux0`, ...) and the weighted sum `loss`.
    """

    def __init__(self, matcher: HungarianMatcher, weights: dict[str, float] | None = None, class_loss: str = "focal",
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, aux_loss: bool = True,
                 detect_all: bool = False):
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        if class_loss not in ("focal", "bce"):
            raise ValueError(f"class_loss must be 'focal' or 'bce', got {class_loss!r}")
        self.matcher = matcher
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.class_loss, self.focal_alpha, self.focal_gamma = class_loss, focal_alpha, focal_gamma
        self.aux_loss = aux_loss
        self.detect_all = detect_all

    # ---- individual terms -------------------------------------------------------------------------------------
    def loss_class(self, logits: torch.Tensor, targets: list[dict], indices, num_targets: float) -> torch.Tensor:
        labels = torch.zeros_like(logits, dtype=torch.float32)
        for n, (slots, objects) in enumerate(indices):
            labels[n, slots.to(logits.device)] = target_labels(targets[n])[objects].to(logits.device)
        if self.class_loss == "focal":
            loss = sigmoid_focal_loss(logits.float(), labels, self.focal_alpha, self.focal_gamma, reduction="sum")
            return loss / num_targets
        return F.binary_cross_entropy_with_logits(logits.float(), labels)

    @staticmethod
    def loss_presence(presence_logits: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        present = torch.tensor([float(bool((target_labels(t) > 0.5).any())) for t in targets],
                               device=presence_logits.device)
        return F.binary_cross_entropy_with_logits(presence_logits.float(), present)

    @staticmethod
    def _matched(indices, device) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.cat([torch.full_like(s, n) for n, (s, _) in enumerate(indices)]).to(device)
        slots = torch.cat([s for s, _ in indices]).to(device)
        return batch, slots

    def loss_boxes(self, boxes: torch.Tensor, targets: list[dict], indices,
                   num_targets: float) -> tuple[torch.Tensor, torch.Tensor]:
        batch, slots = self._matched(indices, boxes.device)
        if len(slots) == 0:
            zero = boxes.sum() * 0.0  # keeps the graph connected (DDP) with a zero gradient
            return zero, zero
        src = boxes[batch, slots].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src.device, torch.float32)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_targets
        loss_giou = generalized_box_iou_loss(src, tgt, reduction="sum") / num_targets
        return loss_bbox, loss_giou

    def loss_masks(self, mask_logits: torch.Tensor, targets: list[dict], indices,
                   num_targets: float) -> tuple[torch.Tensor, torch.Tensor]:
        batch, slots = self._matched(indices, mask_logits.device)
        if len(slots) == 0:
            zero = mask_logits.sum() * 0.0
            return zero, zero
        src = mask_logits[batch, slots].float().flatten(1)
        size = tuple(mask_logits.shape[-2:])
        tgt = torch.cat([resize_masks(t["masks"][j].to(src.device), size) for t, (_, j) in zip(targets, indices)])
        tgt = tgt.flatten(1)
        loss_mask = F.binary_cross_entropy_with_logits(src, tgt, reduction="none").mean(1).sum() / num_targets
        loss_dice = dice_loss(src, tgt).sum() / num_targets
        return loss_mask, loss_dice

    @staticmethod
    def loss_semantic(semantic_logits: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """(N, 1, h, w) logits vs the union of each sample's target masks: mean BCE + mean Dice."""
        size = tuple(semantic_logits.shape[-2:])
        unions = []
        for t in targets:
            masks = t["masks"][target_labels(t) > 0.5]
            unions.append(resize_masks(masks.to(semantic_logits.device), size).amax(0) if len(masks)
                          else semantic_logits.new_zeros(size, dtype=torch.float32))
        union = torch.stack(unions).flatten(1)
        src = semantic_logits.float().flatten(1)
        return F.binary_cross_entropy_with_logits(src, union) + dice_loss(src, union).mean()

    def supervised(self, targets: list[dict]) -> list[dict]:
        """The objects the slots are matched to: all annotated ones with detect_all, else the targets only."""
        return targets if self.detect_all else [only_targets(t) for t in targets]

    # ---- all terms ----------------------------------------------------------------------------------------------
    def _layer_losses(self, logits, boxes, presence_logits, targets, indices, num_targets) -> dict[str, torch.Tensor]:
        loss_bbox, loss_giou = self.loss_boxes(boxes, targets, indices, num_targets)
        return {"loss_class": self.loss_class(logits, targets, indices, num_targets),
                "loss_presence": self.loss_presence(presence_logits, targets),
                "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs, targets: list[dict]) -> dict[str, torch.Tensor]:
        logits = get_field(outputs, "logits")
        boxes = get_field(outputs, "boxes")
        mask_logits = get_field(outputs, "mask_logits")
        presence_logits = get_field(outputs, "presence_logits")
        if len(targets) != len(logits):
            raise ValueError(f"{len(targets)} targets for {len(logits)} predicted instance sets")
        targets = self.supervised(targets)
        num_targets = global_num_targets(targets, logits.device)

        indices = self.matcher(outputs, targets)
        losses = self._layer_losses(logits, boxes, presence_logits, targets, indices, num_targets)
        losses["loss_mask"], losses["loss_dice"] = self.loss_masks(mask_logits, targets, indices, num_targets)
        semantic = get_field(outputs, "semantic_seg")
        if semantic is not None and self.weights["semantic"] > 0:
            losses["loss_semantic"] = self.loss_semantic(semantic, targets)

        aux_logits, aux_boxes = get_field(outputs, "aux_logits"), get_field(outputs, "aux_boxes")
        aux_presence = get_field(outputs, "aux_presence_logits")
        if self.aux_loss and aux_logits is not None and aux_boxes is not None and aux_presence is not None:
            # the last entry of the aux stacks is the final layer itself, already supervised above
            for layer in range(aux_logits.shape[0] - 1):
                layer_out = {"logits": aux_logits[layer], "boxes": aux_boxes[layer]}
                layer_indices = self.matcher(layer_out, targets)
                layer_losses = self._layer_losses(aux_logits[layer], aux_boxes[layer], aux_presence[layer],
                                                  targets, layer_indices, num_targets)
                losses.update({f"{k}_aux{layer}": v for k, v in layer_losses.items()})

        if get_field(outputs, "denoise_logits") is not None:
            losses.update(self.denoise_losses(outputs, targets, num_targets))

        total = sum(self.weights[self.term(name)] * value for name, value in losses.items())
        losses["loss"] = total
        return losses

    def denoise_losses(self, outputs, targets: list[dict], num_targets: float) -> dict[str, torch.Tensor]:
        """Denoising query i of sample n against object i of targets[n] (no matching)."""
        logits = get_field(outputs, "denoise_logits")
        indices = [(torch.arange(len(t["boxes"])), torch.arange(len(t["boxes"]))) for t in targets]
        loss_bbox, loss_giou = self.loss_boxes(get_field(outputs, "denoise_boxes"), targets, indices, num_targets)
        loss_mask, loss_dice = self.loss_masks(get_field(outputs, "denoise_mask_logits"), targets, indices,
                                               num_targets)
        batch, slots = self._matched(indices, logits.device)
        if len(slots):
            labels = torch.cat([target_labels(t) for t in targets]).to(logits.device)
            loss_class = F.binary_cross_entropy_with_logits(logits[batch, slots].float(), labels)
        else:
            loss_class = logits.sum() * 0.0
        return {"loss_class_dn": loss_class, "loss_bbox_dn": loss_bbox, "loss_giou_dn": loss_giou,
                "loss_mask_dn": loss_mask, "loss_dice_dn": loss_dice}

    @staticmethod
    def term(name: str) -> str:
        """'loss_bbox_aux0' -> 'bbox', 'loss_mask_dn' -> 'mask'."""
        return name.removeprefix("loss_").split("_aux")[0].removesuffix("_dn")


__all__ = ["SetCriterion", "DEFAULT_WEIGHTS", "dice_loss", "global_num_targets", "only_targets"]

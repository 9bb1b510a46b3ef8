"""The trainer's second objective (`objective: tracking`): SAM3's tracker on synthetic video clips.

SAM2/SAM3's semi-supervised recipe: every object visible on a clip's first frame gets its ground-truth mask as the
tracker's mask prompt there; the tracker then predicts it on the following frames through the same streaming session
the frame pipeline runs (`InstructSAMModel.run_tracker`), with autograd through the memory encoder, memory attention
and mask decoder across the clip. Objects that enter later are not prompted (finding them is the detector's job on
keyframes).

Loss per (prompted object, frame t >= 1), averaged over them:
    presence  the tracker's object-score logit vs "visible on frame t" (BCE): what lets a track go lost and return
    mask      low-res mask logits vs the area-downsampled ground truth (BCE), on frames where the object is visible
    dice      the same pairs, Dice
transformers gates the mask logits to -1024 where the object score is <= 0 (no gradient there), so mask terms only
move once presence is learnt; they are clamped so a gated frame adds a bounded constant, not 1024.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructsam_tools.data.batching import ClipBatch, collate_clips, first_frame_objects  # noqa: F401  (re-exported)
from instructsam.pipeline.tracker_session import mask_prompt, new_streaming_session
from instructsam_tools.training.criterion import dice_loss

DEFAULT_TRACKING_WEIGHTS = {"presence": 2.0, "mask": 5.0, "dice": 5.0}
LOGIT_CLAMP = 20.0


def positional_memory_attention_(tracker, strength: float = 5.0, pairs: int = 8) -> None:
    """Start SAM3's memory attention as "look at the same place in memory": in every layer's cross-attention to
    the memory bank, query and key projections get zero weights and one shared bias that is non-zero only on the
    `pairs` highest rotary frequencies of each axis. After RoPE the score of query location x for memory location
    y is then sum_p b_p^2 cos(theta_p (y - x)): largest at y = x (strength 5 puts ~3/4 of the weight there on the
    tiny tracker's 8x8 grid), and the memory value there carries the prompted object's mask. (The object-pointer
    tokens get no RoPE, so they score like memory cell (0, 0): near that corner they take part of the weight.)

    Why: a randomly initialised tracker attends almost uniformly, so its output is the memory *averaged over the
    frame*, nearly the same for every prompted object; trained from there it settles on one prompt-independent mask
    (object_overlap 1.0 in every variant tried, docs/model_history.md). From this start it only has to learn
    to follow motion; the projections' weights train from zero, so content matching is learnt on top."""
    rope = tracker.memory_attention.rotary_emb
    axis_freqs = rope.inv_freq.numel()  # per head: [first axis: axis_freqs rotated pairs | second axis: the same]
    if not 0 < pairs <= axis_freqs:
        raise ValueError(f"pairs must be in 1..{axis_freqs}, got {pairs}")
    for layer in tracker.memory_attention.layers:
        attention = layer.cross_attn_image
        bias = torch.zeros(attention.num_attention_heads, 2, axis_freqs, 2)
        bias[:, :, :pairs, 0] = strength  # first element of each of the highest-frequency pairs (inv_freq[0] = 1)
        with torch.no_grad():
            for projection in (attention.q_proj, attention.k_proj):
                projection.weight.zero_()
                projection.bias.copy_(bias.flatten())


@dataclass
class ClipOutput:
    """Per clip: prompted object ids and, for frames 1..T-1, (T-1, N, h, w) mask logits and (T-1, N) object
    score logits (N = len(object_ids), in that order)."""

    object_ids: list[int]
    mask_logits: torch.Tensor
    score_logits: torch.Tensor


def track_clip(model, frames: np.ndarray, prompts: dict[int, np.ndarray]) -> ClipOutput | None:
    """Prompt SAM3's tracker with `prompts` (object id -> (H, W) bool mask) on frame 0 and run it over the rest of
    the clip, differentiably when gradients are enabled. None when nothing is prompted."""
    if not prompts:
        return None
    device = model.device
    session = new_streaming_session(model, *frames.shape[1:3])
    features = model.encode_image(list(frames), vlm=False)  # the ViT once per frame, as the pipeline does
    size = int(model.tracker.image_size)
    masks, scores = [], []
    for t in range(len(frames)):
        session.cache.cache_vision_features(t, model.tracker_features(features, t))
        if t == 0:
            for key, mask in prompts.items():
                session.add_mask_inputs(session.obj_id_to_idx(int(key)), 0, mask_prompt(mask, size, device))
            session.obj_with_new_inputs = [int(k) for k in prompts]
        out = model.run_tracker(session, t)
        if t > 0:
            masks.append(out.pred_masks[:, 0])
            scores.append(out.object_score_logits.reshape(-1))
    ids = [int(k) for k in session.obj_ids]
    return ClipOutput(ids, torch.stack(masks), torch.stack(scores))


class TrackingStep(nn.Module):
    """All clips of a batch as one module call (what DDP wraps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, clips: list[np.ndarray], prompts: list[dict[int, np.ndarray]]) -> list[ClipOutput | None]:
        return [track_clip(self.model, frames, p) for frames, p in zip(clips, prompts)]


class TrackingCriterion(nn.Module):
    """The loss described in the module docstring. Returns unweighted terms `loss_<name>` and the weighted `loss`."""

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_TRACKING_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown tracking loss weight(s) {sorted(unknown)}; known: "
                             f"{sorted(DEFAULT_TRACKING_WEIGHTS)}")
        self.weights = {**DEFAULT_TRACKING_WEIGHTS, **(weights or {})}

    def forward(self, outputs: list[ClipOutput | None], targets: list[dict[int, torch.Tensor]]) -> dict:
        presence, mask, dice = [], [], []
        for out, target in zip(outputs, targets):
            if out is None:
                continue
            gt = torch.stack([target[k] for k in out.object_ids], dim=1).float()  # (T-1, N, H, W)
            frames, n, h, w = out.mask_logits.shape
            gt_low = F.interpolate(gt.reshape(frames * n, 1, *gt.shape[-2:]), size=(h, w), mode="area")
            gt_low = gt_low.reshape(frames, n, h, w)
            visible = gt.flatten(2).any(-1)  # (T-1, N)
            presence.append(F.binary_cross_entropy_with_logits(out.score_logits.float(), visible.float(),
                                                               reduction="none").flatten())
            logits = out.mask_logits.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)[visible]  # (V, h, w)
            if len(logits):
                mask.append(F.binary_cross_entropy_with_logits(logits, gt_low[visible], reduction="none")
                            .flatten(1).mean(1))
                dice.append(dice_loss(logits.flatten(1), gt_low[visible].flatten(1)))
        anchor = next((o.mask_logits for o in outputs if o is not None), None)
        zero = anchor.sum() * 0.0 if anchor is not None else torch.zeros((), requires_grad=True)
        terms = {"presence": torch.cat(presence).mean() if presence else zero,
                 "mask": torch.cat(mask).mean() if mask else zero,
                 "dice": torch.cat(dice).mean() if dice else zero}
        losses = {f"loss_{k}": v for k, v in terms.items()}
        losses["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        return losses


__all__ = ["ClipBatch", "ClipOutput", "TrackingStep", "TrackingCriterion", "track_clip", "collate_clips",
           "first_frame_objects", "positional_memory_attention_", "DEFAULT_TRACKING_WEIGHTS"]

"""Denoising queries (DN-DETR, Li et al. CVPR 2022) for the instance objective.

Besides the K matched slots, each training sample gets one extra query per supervised object, its reference box the
object's box with noise; the query must segment, box and score *that* object (no matching: query i is object i).
This gives the decoder and the mask head a direct lesson in separating instances from the first step, which is what
matching-based training of a from-scratch detector lacks in its early plateau, when every slot predicts the same
blob. The queries are decoded in a separate pass (`InstructSAMModel.segment(denoise_boxes=...)`), so the K slots
never see the ground truth; inference is unchanged.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert


def noised_reference_boxes(targets: list[dict], noise: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, M, 4) cxcywh reference boxes in (0, 1): target n's object i at [n, i] with its centre moved by up to
    noise x half its size and its size scaled by 1 +- noise (uniform), M = max(1, most objects in a sample);
    entries past a sample's objects are a whole-image placeholder (the loss ignores them). Uses the global torch
    RNG (restored by an exact resume)."""
    m = max([1] + [len(t["boxes"]) for t in targets])
    out = torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(len(targets), m, 1)
    for n, t in enumerate(targets):
        if len(t["boxes"]) == 0:
            continue
        cxcywh = box_convert(t["boxes"].detach().float().cpu(), "xyxy", "cxcywh")
        jitter = torch.rand(len(cxcywh), 4) * 2 - 1
        cxcywh[:, :2] += jitter[:, :2] * noise * cxcywh[:, 2:] / 2
        cxcywh[:, 2:] *= 1 + jitter[:, 2:] * noise
        out[n, : len(cxcywh)] = cxcywh
    return out.clamp(1e-3, 1 - 1e-3).to(device)


__all__ = ["noised_reference_boxes"]

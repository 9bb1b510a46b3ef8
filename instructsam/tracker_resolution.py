"""SAM3's tracker at a lower input resolution than the detector's: a cost lever for tracked frames.

A tracked frame runs SAM3's ViT and the tracker's memory attention, and both grow with the token grid: the ViT's
windowed layers linearly in tokens and its global layers quadratically, memory attention with frame tokens x memory
tokens. TrackerResolution runs the same weights on a smaller square input, so nothing is copied or retrained:
  - the ViT's global-attention layers get rotary positions for the smaller grid. transformers' own precompute spans
    the same range for any grid, which is what the windowed layers already see;
  - the tracker's size-derived attributes are swapped for the smaller grid while it runs: input size, feature
    sizes, mask-prompt size and the memory attention's rotary positions, one per token as for a tracker built at
    that size. (Positions stretched to the trained grid's range tracked worse: J&F 0.458 vs 0.481 at 0.75x and
    0.237 vs 0.307 at 0.5x, the tiny model on 16 synthetic test videos.)
The detector keeps its own resolution: a keyframe runs the ViT at both, a tracked frame at the small one only.
The swaps hold only inside `vit()` / `tracker()`, which the model enters around the calls that need them; the
pipeline runs them on one worker thread.
"""
from __future__ import annotations

import contextlib
import copy

import torch


class TrackerResolution:
    def __init__(self, model, scale: float):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"tracker scale must be in (0, 1] (1: the detector's resolution), got {scale}")
        self.scale = float(scale)
        vit = model.detector.vision_encoder.backbone
        tracker = model.tracker
        patch = int(vit.config.patch_size)
        # the tracker's own geometry from its config, never from the live attributes: another thread may be inside
        # `tracker()` with them swapped while a new scale is set
        prompt_config = tracker.config.prompt_encoder_config
        own_grid = int(prompt_config.image_size) // int(prompt_config.patch_size)
        self.grid = max(2, round(own_grid * scale))
        self.image_size = self.grid * patch
        self._vit_layers = [layer for layer in vit.layers if layer.window_size == 0]
        vit_config = copy.copy(vit.config)
        vit_config.image_size = self.image_size
        self._vit_positions = [type(layer).precompute_positions(vit_config, 0) for layer in self._vit_layers]
        attention = tracker.memory_attention
        tracker_config = copy.copy(tracker.config)
        tracker_config.memory_attention_rope_feat_sizes = [self.grid, self.grid]
        self._tracker_sizes = {
            (tracker, "image_size"): self.image_size,
            (tracker, "backbone_feature_sizes"): [[self.grid * (h // own_grid), self.grid * (w // own_grid)]
                                                  for h, w in tracker.config.vision_config.backbone_feature_sizes],
            (tracker.prompt_encoder, "image_embedding_size"): (self.grid, self.grid),
            (tracker.prompt_encoder, "mask_input_size"): (4 * self.grid, 4 * self.grid),
            (tracker.prompt_encoder, "input_image_size"): self.image_size,
            (attention, "position_ids"): type(attention).precompute_positions(tracker_config),
        }

    @contextlib.contextmanager
    def vit(self):
        """SAM3's ViT reads the smaller grid (its windowed layers need nothing: windows are padded as needed)."""
        saved = [layer.position_ids for layer in self._vit_layers]
        try:
            for layer, positions in zip(self._vit_layers, self._vit_positions):
                layer.position_ids = positions.to(layer.position_ids.device)
            yield
        finally:
            for layer, positions in zip(self._vit_layers, saved):
                layer.position_ids = positions

    @contextlib.contextmanager
    def tracker(self):
        """SAM3's tracker (and the tracker neck's reshape, which reads its prompt encoder) at the smaller grid."""
        saved = {key: getattr(*key) for key in self._tracker_sizes}
        try:
            for (owner, name), value in self._tracker_sizes.items():
                setattr(owner, name, value.to(saved[owner, name].device) if torch.is_tensor(value) else value)
            yield
        finally:
            for (owner, name), value in saved.items():
                setattr(owner, name, value)


__all__ = ["TrackerResolution"]

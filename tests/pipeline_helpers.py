"""Helpers for the frame-pipeline tests."""
from __future__ import annotations

import torch
from model_fixtures import load_tiny


def load_seeing_tiny():
    """The tiny model with its random tracker's object-score head biased (+3) so tracked objects count as visible.

    The random tracker otherwise declares every object gone on the first tracked frame and outputs SAM's constant
    no-object mask logits (-1024), so tracked frames would carry no masks and comparisons would compare constants.
    A model with different weights, not a mock: everything else runs as is."""
    model = load_tiny()
    with torch.no_grad():
        model.tracker.mask_decoder.pred_obj_score_head.proj_out.bias += 3.0
    return model

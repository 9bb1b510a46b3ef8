"""Section 7: DIT's cost beside InstructSAM's (random weights, one 640x480 frame, median ms).

DIT's detector features depend on the instruction, so they cannot be cached across instructions: a keyframe runs
SAM3's ViT once per instruction (plus the plain ViT the tracker reads), an instruction switch re-runs it, and N
instructions cost N encoder passes. InstructSAM encodes the image once and every instruction reuses the features.

    keyframe   encode_image + segment one instruction + postprocess
    switch     segment + postprocess for a new instruction on features already encoded
    N batched  encode_image + one segment call with N instructions + postprocess (per instruction: / N)
    encoder    SAM3's ViT alone on the frame: what every further DIT instruction pays again
"""
from __future__ import annotations

import torch

from instructsam.preprocess import to_image_list, to_square_pixels
from instructsam_tools.benchmarks.common import FRAME_SIZE, NUM_OBJECTS, moving_shapes, time_ms
from instructsam_tools.benchmarks.paths import BATCH_SIZES, model_paths, run_batching

MODELS = (("instructsam", None), ("e_dit", "end_to_end"), ("l_dit", "layer_wise"))


def dit_costs(model, repeats: int, counts=BATCH_SIZES) -> dict:
    image = moving_shapes(1, *FRAME_SIZE)[0]
    paths = model_paths(model, repeats, NUM_OBJECTS, encoders=False)  # its cold pass is a keyframe's detection
    out = {"keyframe": paths["cold"].as_dict(), "switch": paths["switch"].as_dict()}
    with torch.no_grad():
        cfg = model.config
        pixels = to_square_pixels(to_image_list(image), cfg.image_size, cfg.sam3_image_mean, cfg.sam3_image_std,
                                  model.device, model.detector.dtype)
        vit = model.detector.vision_encoder.backbone
        out["encoder"] = time_ms(lambda: vit(pixels), repeats).as_dict()
    out["batched"], _ = run_batching(model, "", repeats, counts)  # N instructions in one call (its targets unused)
    return out


def run_dit(store, config: str, repeats: int) -> dict:
    from instructsam.loading import load_model

    result = {}
    for name, variant in MODELS:
        path = store.checkpoint(config) if variant is None else store.dit_checkpoint(config, variant)
        model = load_model(path)
        result[name] = dit_costs(model, repeats)
        del model
    return result


__all__ = ["run_dit", "dit_costs", "MODELS"]

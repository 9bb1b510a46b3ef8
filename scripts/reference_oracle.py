"""Golden values from the authors' own InstructSAM code (tests/golden/instructsam2b_tiny_reference.safetensors).

The reference repository has no licence, so it is never part of this one: fetch it, and run it in a scratch
environment beside this package's venv (its torch reused, the transformers it needs put in front):

    git clone https://github.com/DCDmllm/InstructSAM /tmp/refrepo            # at 1ec37cc
    pip download --no-deps -d /tmp/w "transformers==5.0.0" qwen-vl-utils ffmpeg-python future "tokenizers==0.22.1" \
        "huggingface-hub>=1.3,<2" httpx
    pip install --no-deps --target /tmp/refenv /tmp/w/*                      # (+ httpx's own dependencies)
    mkdir /tmp/refstubs && printf 'def load_dataset(*a, **k): ...\ndef concatenate_datasets(*a, **k): ...\n' \
        > /tmp/refstubs/datasets.py                                          # imported by its training code only

    python scripts/reference_oracle.py inputs OUT          # this package's env: checkpoint + input tensors
    (cd OUT && PYTHONPATH=/tmp/refenv:/tmp/refstubs:/tmp/refrepo python scripts/reference_oracle.py run OUT)
    python scripts/reference_oracle.py golden OUT          # this package's env: compare, write the golden file

`run` imports the reference's modules and calls its `load_pretrained_model` and `model.inference` unchanged, with
one shim: transformers 5.0.0's Qwen3VLModel.get_image_features returns a ModelOutput where the commit the reference
pins returned an (embeds, deepstack) tuple.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "instructsam2b_tiny_reference.safetensors"
TEXT, MAX_NEW_TOKENS = "the red circle", 8


def image():
    import numpy as np
    return np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def inputs(out: Path) -> None:
    from safetensors.torch import save_file

    from instructsam.official_checkpoint import load_official
    from instructsam.preprocess import to_image_list, to_square_pixels
    from instructsam_tools.official_tiny import build_official_tiny

    official, _ = build_official_tiny(out, phrases=2)
    model = load_official(official)
    imgs = to_image_list(image())
    patches, grid = model._qwen_patches(imgs, torch.float32)
    cfg = model.config
    sam = to_square_pixels(imgs, cfg.image_size, cfg.sam3_image_mean, cfg.sam3_image_std, quantize=True)
    with torch.no_grad():
        features = model.encode_image(image())
    tokens = model.prompts.encode([TEXT], cfg.template_task)
    ids = torch.tensor(model.prompts.prefix_ids(features.vlm_image_embeds.shape[1]) + tokens.suffix_ids[0].tolist())
    save_file({"input_ids": ids[None], "pixel_values": patches, "image_grid_thw": grid, "sam_pixels": sam},
              str(out / "inputs.safetensors"))


def run(out: Path) -> None:
    from safetensors.torch import load_file, save_file

    from instructsam.models import load_pretrained_model  # the reference's package (PYTHONPATH)

    io = load_file(str(out / "inputs.safetensors"))
    _, model, _ = load_pretrained_model(str(out / "official"), None, attn_implementation="sdpa", device_map="cpu")
    model = model.float().eval()
    inner = type(model.model)
    stock = inner.get_image_features

    def as_tuple(self, pixel_values, grid=None, **kwargs):
        found = stock(self, pixel_values, grid, **kwargs)
        return found.pooler_output, found.deepstack_features

    inner.get_image_features = as_tuple
    with torch.inference_mode():
        ids, masks, scores = model.inference(
            input_ids=io["input_ids"], attention_mask=torch.ones_like(io["input_ids"]),
            pixel_values=io["pixel_values"], image_grid_thw=io["image_grid_thw"], sam_images=[io["sam_pixels"][0]],
            max_new_tokens=MAX_NEW_TOKENS, use_cache=True, output_hidden_states=True, return_dict_in_generate=True,
            do_sample=False)
    import transformers
    save_file({"generated_ids": ids.contiguous(), "pred_masks": masks.float().contiguous(),
               "scores": scores.float().contiguous()}, str(out / "reference.safetensors"),
              metadata={"reference_transformers": transformers.__version__, "reference_torch": torch.__version__,
                        "precision": "float32, sdpa, CPU"})


def golden(out: Path) -> None:
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from instructsam.official_checkpoint import load_official

    ref = load_file(str(out / "reference.safetensors"))
    with safe_open(str(out / "reference.safetensors"), framework="pt") as f:
        run_metadata = f.metadata()
    model = load_official(out / "official")
    with torch.no_grad():
        ours = model.segment(model.encode_image(image()), [TEXT], max_new_tokens=MAX_NEW_TOKENS)
    print("max |mask difference|", float((ours.mask_logits[0] - ref["pred_masks"].flatten(0, 1)).abs().max()),
          "max |score difference|", float((ours.scores[0] - ref["scores"].flatten()).abs().max()))
    save_file(ref, str(GOLDEN), metadata={
        "reference": "github.com/DCDmllm/InstructSAM at 1ec37cc, unmodified (scripts/reference_oracle.py)",
        "checkpoint": "instructsam_tools.official_tiny phrases=2 (config/model_tiny.yaml, seed 0)",
        "inputs": f"{TEXT!r}, numpy default_rng(3) 60x80 uint8 image, this package's prompt ids and pixels",
        "shim": "Qwen3VLModel.get_image_features returned as an (embeds, deepstack) tuple, as the pinned commit did",
        "transformers_here": transformers.__version__, **run_metadata})


if __name__ == "__main__":
    command, directory = sys.argv[1], Path(sys.argv[2])
    {"inputs": inputs, "run": run, "golden": golden}[command](directory)

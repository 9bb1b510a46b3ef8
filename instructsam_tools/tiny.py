"""Tiny InstructSAM from config/model_tiny.yaml: trained tokenizer, tiny Qwen3-VL, tiny SAM3 (detector + tracker).

The tiny sources are saved as ordinary checkpoint directories (like Qwen3-VL-2B-Instruct and facebook/sam3) under
`out_dir/sources/` and composed with `instructsam_tools.compose`, so tests load the tiny model through exactly the
path real checkpoints take (`InstructSAMModel.from_pretrained`). Deterministic for the yaml's seed.

    python -m instructsam_tools.tiny OUT_DIR [--config config/model_tiny.yaml]

The model yaml schema (shared with config/model_full.yaml): `seed`, `tokenizer.vocab_size`, `vlm`
(Qwen3VLConfig kwargs; special-token ids come from the tokenizer), `sam3` (Sam3VideoConfig kwargs),
`instructsam` (InstructSAMConfig kwargs), and optionally `he_init`: SAM3 sub-modules (paths in Sam3VideoModel,
e.g. detector_model.mask_decoder.mask_embedder) whose linear layers get He initialisation instead of the default
std 0.02. SAM3's three-layer mask embedder at std 0.02 passes ~0.5% of a slot's state on, so its last-layer bias
(the same for every slot) decides every slot's mask and a from-scratch detector starts out collapsed.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Sam3VideoConfig,
    Sam3VideoModel,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from instructsam_tools.compose import compose
from instructsam_tools.yaml_files import read_yaml_tree
from instructsam import resources
from instructsam.tokenizer import special_token_ids, train_tiny_tokenizer

DEFAULT_CONFIG = "config/model_tiny.yaml"


def load_spec(path: str | Path) -> dict:
    """A model yaml (a relative path is tried in the working directory, then the package's share directories);
    `base: other.yaml` is merged under it, as in training configs."""
    return read_yaml_tree(resources.find(path, "model config"))


def vlm_config_from_spec(spec: dict, tokenizer: PreTrainedTokenizerBase) -> Qwen3VLConfig:
    """Qwen3VLConfig from the yaml; special-token ids are the tokenizer's, vocab_size defaults to its length."""
    ids = special_token_ids(tokenizer)
    vlm_spec = dict(spec["vlm"])
    text = dict(vlm_spec.pop("text_config"))
    text.setdefault("vocab_size", len(tokenizer))
    text.setdefault("pad_token_id", tokenizer.pad_token_id)
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size {text['vocab_size']}")
    return Qwen3VLConfig(
        text_config=text, vision_config=vlm_spec.pop("vision_config"), image_token_id=ids["<|image_pad|>"],
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **vlm_spec)


def sam3_config_from_spec(spec: dict) -> Sam3VideoConfig:
    return Sam3VideoConfig(**(spec.get("sam3") or {}))


def he_init_(module: torch.nn.Module) -> None:
    """He-normal init of `module`'s linear layers in order (ReLU gain, the last one gain 1), zero biases."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"he_init: {type(module).__name__} has no linear layers")
    with torch.no_grad():
        for i, lin in enumerate(linears):
            gain = 1.0 if i == len(linears) - 1 else math.sqrt(2.0)
            lin.weight.normal_(0.0, gain / math.sqrt(lin.in_features))
            if lin.bias is not None:
                lin.bias.zero_()


def build_tiny_sources(out_dir: str | Path, spec: dict) -> tuple[Path, Path]:
    """Save a tiny Qwen3-VL (+ tokenizer, image processor) and a tiny SAM3 video model; return their dirs."""
    out = Path(out_dir)
    seed = spec.get("seed", 0)
    torch.manual_seed(seed)
    tokenizer = train_tiny_tokenizer(spec["tokenizer"]["vocab_size"], seed=seed)
    vlm_config = vlm_config_from_spec(spec, tokenizer)
    vlm_dir, sam3_dir = out / "sources" / "vlm", out / "sources" / "sam3"
    Qwen3VLForConditionalGeneration(vlm_config).save_pretrained(vlm_dir)
    tokenizer.save_pretrained(vlm_dir)
    vc = vlm_config.vision_config
    Qwen2VLImageProcessor(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                          temporal_patch_size=vc.temporal_patch_size, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3).save_pretrained(vlm_dir)
    sam3 = Sam3VideoModel(sam3_config_from_spec(spec))
    for path in spec.get("he_init") or []:
        try:
            he_init_(sam3.get_submodule(path))
        except AttributeError:
            raise ValueError(f"he_init: SAM3 has no module {path!r}") from None
    sam3.save_pretrained(sam3_dir)
    return vlm_dir, sam3_dir


def build_tiny(out_dir: str | Path, config_path: str | Path = DEFAULT_CONFIG) -> Path:
    """Build the tiny sources and compose them into `out_dir` (an InstructSAM directory); returns out_dir."""
    spec = load_spec(config_path)
    vlm_dir, sam3_dir = build_tiny_sources(out_dir, spec)
    return compose(vlm_dir, sam3_dir, out_dir, overrides=dict(spec.get("instructsam") or {}),
                   seed=spec.get("seed", 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="build the tiny InstructSAM checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    args = parser.parse_args(argv)
    print(build_tiny(args.out_dir, args.config))


if __name__ == "__main__":
    main()

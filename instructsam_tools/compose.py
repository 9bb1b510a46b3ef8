"""Compose an InstructSAM directory from a local Qwen3-VL directory and a local SAM3 directory, weights unchanged.

    python -m instructsam_tools.compose --vlm DIR --sam3 DIR --out DIR [--num-queries K] [--dtype bfloat16]

The SAM3 directory must be laid out like facebook/sam3 (`model_type: sam3_video`, detector + tracker weights
under `detector_model.*`, `tracker_model.*`, `tracker_neck.*`); the VLM directory like Qwen/Qwen3-VL-2B-Instruct
(`model_type: qwen3_vl` + its tokenizer). The new parts (query bank, projector, LoRA with lora_B = 0) are
initialised so the composed model's VLM and SAM3 compute exactly what the sources compute.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration, Sam3VideoModel

from instructsam.checkpoint import read_config_json, safetensors_files
from instructsam.config import InstructSAMConfig
from instructsam.errors import CheckpointError
from instructsam.modeling import InstructSAMModel
from instructsam.tokenizer import add_query_tokens, special_token_ids


def _vlm_preprocessing(vlm_dir: Path, vision_config) -> dict:
    """Normalisation from the VLM's preprocessor_config.json (if any), checked against its vision config."""
    file = vlm_dir / "preprocessor_config.json"
    if not file.is_file():
        return {}
    pre = json.loads(file.read_text())
    for key in ("patch_size", "merge_size", "temporal_patch_size"):
        expected = {"patch_size": vision_config.patch_size, "merge_size": vision_config.spatial_merge_size,
                    "temporal_patch_size": vision_config.temporal_patch_size}[key]
        if key in pre and pre[key] != expected:
            raise CheckpointError(f"{file}: {key}={pre[key]} disagrees with the vision config ({expected})")
    out = {}
    if "image_mean" in pre:
        out["vlm_image_mean"] = [float(v) for v in pre["image_mean"]]
    if "image_std" in pre:
        out["vlm_image_std"] = [float(v) for v in pre["image_std"]]
    return out


def load_sources(vlm_dir: str | Path, sam3_dir: str | Path, dtype: torch.dtype | None = None):
    """Load the VLM (+ tokenizer) and SAM3 (detector + tracker) from local directories, with clear errors."""
    vlm_dir, sam3_dir = Path(vlm_dir), Path(sam3_dir)
    vlm_cfg = read_config_json(vlm_dir, "VLM")
    if vlm_cfg.get("model_type") != "qwen3_vl":
        raise CheckpointError(f"VLM directory {str(vlm_dir)!r} holds model_type {vlm_cfg.get('model_type')!r}; "
                              f"InstructSAM composes a Qwen3-VL model (model_type 'qwen3_vl')")
    sam_cfg = read_config_json(sam3_dir, "SAM3")
    if sam_cfg.get("model_type") != "sam3_video":
        raise CheckpointError(
            f"SAM3 directory {str(sam3_dir)!r} holds model_type {sam_cfg.get('model_type')!r}; InstructSAM needs "
            f"the full SAM3 checkpoint with detector and tracker (model_type 'sam3_video', as facebook/sam3)")
    safetensors_files(vlm_dir, "VLM")
    safetensors_files(sam3_dir, "SAM3")
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    vlm = Qwen3VLForConditionalGeneration.from_pretrained(str(vlm_dir), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(vlm_dir), local_files_only=True)
    sam3 = Sam3VideoModel.from_pretrained(str(sam3_dir), **kwargs)
    return vlm, tokenizer, sam3


def compose(vlm_dir: str | Path, sam3_dir: str | Path, out_dir: str | Path, num_queries: int | None = None,
            overrides: dict | None = None, dtype: torch.dtype | None = None, seed: int = 0) -> Path:
    """Write an InstructSAM directory (config.json, model.safetensors, tokenizer) to `out_dir`.

    overrides: InstructSAMConfig fields (e.g. vlm_image_size, lora_r, attention_mode, thresholds).
    """
    vlm, tokenizer, sam3 = load_sources(vlm_dir, sam3_dir, dtype)
    special_token_ids(tokenizer)  # fails early, naming the token, if this is not a Qwen-style tokenizer
    settings = dict(overrides or {})
    if num_queries is not None:
        settings["num_queries"] = num_queries
    settings.setdefault("num_queries", InstructSAMConfig.num_queries)
    settings.update({k: v for k, v in _vlm_preprocessing(Path(vlm_dir), vlm.config.vision_config).items()
                     if k not in settings})
    settings["query_token_ids"] = add_query_tokens(tokenizer, settings["num_queries"])
    config = InstructSAMConfig(vlm_config=vlm.config, sam3_config=sam3.config, **settings)
    torch.manual_seed(seed)  # the new parts' initialisation is reproducible
    model = InstructSAMModel(config, vlm=vlm, sam3=sam3)
    if dtype is not None:
        model.to(dtype)
    model.attach_tokenizer(tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", required=True, help="local Qwen3-VL directory (e.g. Qwen3-VL-2B-Instruct)")
    parser.add_argument("--sam3", required=True, help="local SAM3 directory (facebook/sam3 layout)")
    parser.add_argument("--out", required=True, help="output InstructSAM directory")
    parser.add_argument("--num-queries", type=int, default=None, help="K instance queries (default 64)")
    parser.add_argument("--vlm-image-size", type=int, default=None, help="VLM input side (default 448)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    args = parser.parse_args(argv)
    overrides = {"vlm_image_size": args.vlm_image_size} if args.vlm_image_size else {}
    out = compose(args.vlm, args.sam3, args.out, num_queries=args.num_queries, overrides=overrides,
                  dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"composed InstructSAM checkpoint written to {out}")


if __name__ == "__main__":
    main()

"""A tiny random checkpoint in the published InstructSAM-2B layout, and a facebook/sam3-style directory beside it,
built from config/model_tiny.yaml's shapes: what the tests (and anyone without the real weights) load through
exactly the path the real checkpoint takes (instructsam.official_checkpoint).

    python -m instructsam_tools.official_tiny OUT_DIR [--phrases 1|2] [--num-queries 4] [--shards 2]

writes OUT_DIR/official (config.json: qwen3_vl + InstructSAM's keys; model-0000x-of-0000n.safetensors with an index;
tokenizer with the four added tokens in the official order; generation and image-processor configs) and
OUT_DIR/sam3 (a Sam3VideoModel: detector, tracker, CLIP text encoder, presence head).

Random weights never write a phrase and never stop, so the language model's weights are arranged to script a
short answer under greedy decoding: its layers' output projections are scaled down (each hidden state stays close
to its input embedding) and the untied lm_head maps "end of prompt" -> <|object_ref_start|> -> "red" ->
<|object_ref_end|>, and after the query block either to <|im_end|> (--phrases 1) or to "," and round again
(--phrases 2: two phrases within 8 new tokens). SAM3's detector heads are perturbed, so loading them from the
official file rather than from facebook/sam3 is visible.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AddedToken, Qwen2VLImageProcessor, Qwen3VLForConditionalGeneration, Sam3VideoModel

from instructsam_tools.tiny import DEFAULT_CONFIG, load_spec, sam3_config_from_spec, vlm_config_from_spec
from instructsam.tokenizer import train_tiny_tokenizer

ADDED_TOKENS = ("<REGION>", "[SEG]", "<|mask_start|>", "<|mask_end|>")  # the official order (after the Qwen ones)
PHRASE_WORD = "red"
MIN_PIXELS, MAX_PIXELS = 32 * 32, 64 * 96  # the tiny image processor's area bounds: a few dozen tokens per frame


def official_tokenizer(spec: dict):
    tokenizer = train_tiny_tokenizer(spec["tokenizer"]["vocab_size"], seed=spec.get("seed", 0))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS]},
        replace_extra_special_tokens=False)
    return tokenizer


def script_answer(vlm: Qwen3VLForConditionalGeneration, tokenizer, phrases: int) -> None:
    """Arrange the language model so greedy decoding writes the scripted answer (module docstring)."""
    ids = tokenizer.convert_tokens_to_ids
    word = tokenizer(PHRASE_WORD, add_special_tokens=False).input_ids
    if len(word) != 1:
        raise ValueError(f"{PHRASE_WORD!r} is not one token of the tiny tokenizer")
    prompt_end = tokenizer("assistant\n", add_special_tokens=False).input_ids[-1]
    comma = tokenizer(", ", add_special_tokens=False).input_ids[0]
    after_block = ids("<|im_end|>") if phrases == 1 else comma
    steps = {prompt_end: ids("<|object_ref_start|>"), ids("<|object_ref_start|>"): word[0],
             word[0]: ids("<|object_ref_end|>"), ids("<|mask_end|>"): after_block, comma: ids("<|object_ref_start|>")}
    lm = vlm.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
            layer.mlp.down_proj.weight.mul_(0.01)
        embed = lm.embed_tokens.weight
        head = torch.randn_like(embed) * 0.002
        for source, target in steps.items():
            head[target] += embed[source] / embed[source].norm()
        vlm.lm_head.weight.copy_(head)


def build_official_tiny(out_dir: str | Path, phrases: int = 1, num_queries: int = 4, shards: int = 2,
                        config_path: str | Path = DEFAULT_CONFIG, dtype: torch.dtype = torch.float32,
                        pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS)) -> tuple[Path, Path]:
    """Write OUT/official and OUT/sam3; returns both paths. config_path/dtype/pixels: the shapes (e.g.
    config/model_full.yaml for the Qwen3-VL-2B / SAM3 shapes, in bfloat16, with Qwen's own pixel bounds)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _build(Path(out_dir), phrases, num_queries, shards, config_path, pixels)
    finally:
        torch.set_default_dtype(previous)


def _build(out: Path, phrases: int, num_queries: int, shards: int, config_path, pixels) -> tuple[Path, Path]:
    official, sam3_dir = out / "official", out / "sam3"
    spec = load_spec(config_path)
    torch.manual_seed(spec.get("seed", 0))
    tokenizer = official_tokenizer(spec)
    vlm_config = vlm_config_from_spec(spec, tokenizer)
    vlm_config.tie_word_embeddings = vlm_config.text_config.tie_word_embeddings = False  # the scripted head
    vlm = Qwen3VLForConditionalGeneration(vlm_config)
    script_answer(vlm, tokenizer, phrases)

    sam3 = Sam3VideoModel(sam3_config_from_spec(spec))
    sam3.save_pretrained(sam3_dir)
    del sam3.tracker_model  # only the detector goes into the official file
    detector = sam3.detector_model
    width = detector.config.detr_decoder_config.hidden_size
    d = vlm_config.text_config.hidden_size
    state = {k: v.contiguous() for k, v in vlm.state_dict().items()}
    for key, value in detector.state_dict().items():
        if key.startswith(("text_encoder.", "detr_decoder.presence_", "detr_decoder.query_embed.",
                           "detr_decoder.reference_points.")):
            continue  # not in the official file
        if key.startswith(("detr_decoder.layers.", "mask_decoder.", "dot_product_scoring.")) and value.is_floating_point():
            value = value + 0.01 * torch.randn_like(value)  # "fine-tuned": differs from facebook/sam3
        state[f"model.grounding_model.model.{key}"] = value.contiguous()
    state["model.grounding_model.model.detr_decoder.query_embed.weight"] = torch.randn(num_queries, width) * 0.02
    state["model.grounding_model.model.detr_decoder.reference_points.weight"] = torch.randn(num_queries, 4)
    state["model.mask_queries"] = torch.randn(num_queries, d) * 0.02
    for name in ("mask_hidden_fcs", "text_hidden_fcs"):
        state[f"model.{name}.0.0.weight"] = torch.randn(d, d) / d ** 0.5
        state[f"model.{name}.0.0.bias"] = torch.zeros(d)
        state[f"model.{name}.0.2.weight"] = torch.randn(width, d) / d ** 0.5
        state[f"model.{name}.0.2.bias"] = torch.zeros(width)
    _save_sharded(state, official, shards)

    ids = tokenizer.convert_tokens_to_ids
    config = vlm_config.to_dict()
    config.update(
        region_token_index=ids("<REGION>"), seg_token_index=ids("[SEG]"),
        seg_start_token_index=ids("<|mask_start|>"), seg_end_token_index=ids("<|mask_end|>"),
        ref_start_token_index=ids("<|object_ref_start|>"), ref_end_token_index=ids("<|object_ref_end|>"),
        max_seg_nums=num_queries, seg_encoder="sam3", seg_decoder="sam3", mask_decoder_model="sam3",
        mm_mask_decoder="sam3", out_dim=width, dice_loss_weight=0.5, bce_loss_weight=2.0, cls_loss_weight=1.0,
        loss_sample_points=True)
    (official / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (official / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")], "do_sample": False,
         "repetition_penalty": 1.0}, indent=2) + "\n")
    tokenizer.save_pretrained(official)
    vc = vlm_config.vision_config
    Qwen2VLImageProcessor(size={"shortest_edge": pixels[0], "longest_edge": pixels[1]}, patch_size=vc.patch_size,
                          merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size,
                          image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(official)
    return official, sam3_dir


def _save_sharded(state: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in group}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                       indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--phrases", type=int, choices=(1, 2), default=1)
    parser.add_argument("--num-queries", type=int, default=4)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args(argv)
    for path in build_official_tiny(args.out_dir, args.phrases, args.num_queries, args.shards):
        print(path)


if __name__ == "__main__":
    main()

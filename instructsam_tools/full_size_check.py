"""Full-size wiring check: build the full InstructSAM composition (Qwen3-VL-2B-shaped VLM + default SAM3 video
config) with random weights on CPU, print parameters per component and peak memory, run one forward pass.

    python -m instructsam_tools.full_size_check [--sam3-size 1008] [--vlm-size 448] [--dtype bfloat16]
                                          [--out docs/full_size_check.txt] [--config config/model_full.yaml]

Needs ~15 GB of RAM at full size, so it is not part of the test suite; the tests run the same code on
config/model_tiny.yaml. The tokenizer is a stand-in (the tiny BPE): Qwen's cannot be downloaded here.

    python -m instructsam_tools.full_size_check --official [--out docs/official_full_size_check.txt]

does the same for the published InstructSAM-2B's layout (reference mode, K = 10): a random checkpoint in that layout
at full size, written to disk with its facebook/sam3-style directory, loaded through the official loader, one
keyframe on a 640x480 frame with a short scripted answer (random weights never stop on their own).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from instructsam.config import InstructSAMConfig
from instructsam.modeling import InstructSAMModel
from instructsam_tools.tiny import load_spec, sam3_config_from_spec, vlm_config_from_spec
from instructsam.tokenizer import add_query_tokens, train_tiny_tokenizer


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def component_table(model: InstructSAMModel) -> list[tuple[str, int]]:
    det, lm = model.detector, model.language_model
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    rows = [
        ("vlm.visual (vision tower + mergers)", count(model.vlm.model.visual)),
        ("vlm.language_model (incl. tied embeddings/lm_head, LoRA)", count(lm)),
        ("  of which LoRA", lora),
        ("sam3.detector.vision_encoder (ViT + FPN neck)", count(det.vision_encoder)),
        ("sam3.detector.text_encoder (CLIP, kept unchanged, unused)", count(det.text_encoder) +
         count(det.text_projection)),
        ("sam3.detector.geometry_encoder (unused)", count(det.geometry_encoder)),
        ("sam3.detector.detr_encoder", count(det.detr_encoder)),
        ("sam3.detector.detr_decoder", count(det.detr_decoder)),
        ("sam3.detector.mask_decoder", count(det.mask_decoder)),
        ("sam3.detector.dot_product_scoring", count(det.dot_product_scoring)),
        ("sam3.tracker (no own vision encoder)", count(model.tracker)),
        ("sam3.tracker_neck", count(model.sam3.tracker_neck)),
        ("query_bank", model.query_bank.numel()),
        ("projector", count(model.projector)),
    ]
    rows.append(("TOTAL (unique parameters)", count(model)))
    rows.append(("trainable (query bank + projector + LoRA)", sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad)))
    return rows


def build_random(spec: dict, sam3_size: int | None, vlm_size: int | None, dtype: torch.dtype,
                 meta: bool = False, device: str | None = None) -> InstructSAMModel:
    """The composition a model yaml describes, with random weights in `dtype` (meta=True: on the meta device, only
    shapes; the benchmark's FLOP counter never reads the weights), initialised on `device` (default the CPU)."""
    tokenizer = train_tiny_tokenizer(spec["tokenizer"]["vocab_size"], seed=spec.get("seed", 0))
    vlm_config = vlm_config_from_spec(spec, tokenizer)
    sam3_config = sam3_config_from_spec(spec)
    if sam3_size:
        sam3_config.image_size = sam3_size  # propagates to detector and tracker (feature sizes, rope sizes)
    settings = dict(spec.get("instructsam") or {})
    if vlm_size:
        settings["vlm_image_size"] = vlm_size
    settings["query_token_ids"] = add_query_tokens(tokenizer, settings.get("num_queries", 64))
    config = InstructSAMConfig(vlm_config=vlm_config, sam3_config=sam3_config, **settings)
    torch.manual_seed(spec.get("seed", 0))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype: no fp32 copy at full size
    try:
        where = "meta" if meta else device
        with torch.device(where) if where else contextlib.nullcontext():
            model = InstructSAMModel(config)
    finally:
        torch.set_default_dtype(previous)
    model.attach_tokenizer(tokenizer)
    return model.eval()


def _report():
    """The report's lines, and `say`, which prints a line and keeps it."""
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    return lines, say


def say_components(say, model) -> None:
    say(f"{'component':60s} {'parameters':>15s}")
    for name, n in component_table(model):
        say(f"{name:60s} {n:>15,d}")


def run(config_path: str | Path, sam3_size: int | None, vlm_size: int | None, dtype: torch.dtype,
        num_instructions: int = 2) -> str:
    lines, say = _report()

    spec = load_spec(config_path)
    say(f"InstructSAM full-size wiring check  ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    say(f"config: {config_path}; dtype {dtype}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{platform.machine()}, {torch.get_num_threads()} CPU threads")
    t0 = time.perf_counter()
    model = build_random(spec, sam3_size, vlm_size, dtype)
    cfg = model.config
    say(f"built with random weights in {time.perf_counter() - t0:.1f} s; peak RSS after build "
        f"{peak_rss_gb():.2f} GB")
    vt = cfg.vlm_config.text_config
    vit = cfg.sam3_config.detector_config.vision_config.backbone_config
    say(f"VLM: hidden {vt.hidden_size}, {vt.num_hidden_layers} layers, vocab {vt.vocab_size}; vision depth "
        f"{cfg.vlm_config.vision_config.depth}. SAM3: ViT {vit.num_hidden_layers} layers, hidden {vit.hidden_size}. "
        f"K = {cfg.num_queries}")
    say()
    say_components(say, model)
    say()
    vgrid = cfg.vlm_image_size // cfg.vlm_config.vision_config.patch_size
    sgrid = cfg.image_size // vit.patch_size
    say(f"input: one 640x480 RGB image -> SAM3 {cfg.image_size}x{cfg.image_size} ({sgrid}x{sgrid} ViT tokens; "
        f"default 1008), VLM {cfg.vlm_image_size}x{cfg.vlm_image_size} ({(vgrid // 2) ** 2} image tokens); "
        f"{num_instructions} instructions in one batched segment call")
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    instructions = ["every mug left of the sink", "the red cup that is closest to the robot",
                    "all tools except the hammer"][:num_instructions]
    with torch.no_grad():
        t0 = time.perf_counter()
        features = model.encode_image(image)
        t1 = time.perf_counter()
        out = model.segment(features, instructions)
        t2 = time.perf_counter()
        preds = model.postprocess(out, features.original_sizes, score_threshold=0.0, max_instances=5)
        t3 = time.perf_counter()
    say(f"encode_image {t1 - t0:.1f} s, segment {t2 - t1:.1f} s, postprocess {t3 - t2:.2f} s")
    say(f"outputs: mask_logits {tuple(out.mask_logits.shape)}, boxes {tuple(out.boxes.shape)}, scores "
        f"{tuple(out.scores.shape)}, presence {tuple(out.presence.shape)}; finite: "
        f"{bool(torch.isfinite(out.mask_logits.float()).all() and torch.isfinite(out.scores.float()).all())}")
    say(f"postprocessed (score_threshold 0, max 5): {[p.masks.shape for p in preds]}")
    say(f"peak RSS (whole run): {peak_rss_gb():.2f} GB")
    return "\n".join(lines) + "\n"


def run_official(config_path: str | Path, dtype: torch.dtype, max_new_tokens: int = 8) -> str:
    import shutil
    import tempfile

    from instructsam.official_checkpoint import load_official
    from instructsam_tools.official_tiny import build_official_tiny

    lines, say = _report()

    say(f"InstructSAM-2B layout (reference mode) full-size wiring check  ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    say(f"config: {config_path} shapes, K = 10; dtype {dtype}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; {platform.machine()}, {torch.get_num_threads()} CPU threads")
    root = Path(tempfile.mkdtemp(prefix="instructsam_official_full_"))
    try:
        t0 = time.perf_counter()
        official, _ = build_official_tiny(root, phrases=2, num_queries=10, shards=4, config_path=config_path,
                                          dtype=dtype, pixels=(65536, 16777216))
        size = sum(f.stat().st_size for f in official.glob("*.safetensors"))
        say(f"random official-layout checkpoint written in {time.perf_counter() - t0:.1f} s: {size / 1e9:.2f} GB "
            f"in 4 shards (+ facebook/sam3-style directory); peak RSS {peak_rss_gb():.2f} GB")
        t0 = time.perf_counter()
        model = load_official(official, dtype=dtype)
        say(f"loaded through instructsam.official_checkpoint in {time.perf_counter() - t0:.1f} s; peak RSS "
            f"{peak_rss_gb():.2f} GB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    say()
    say_components(say, model)
    say()
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with torch.no_grad():
        t0 = time.perf_counter()
        features = model.encode_image(image)
        t1 = time.perf_counter()
        out = model.segment(features, ["every mug left of the sink"], max_new_tokens=max_new_tokens)
        t2 = time.perf_counter()
    say(f"input: one 640x480 RGB image -> VLM {features.vlm_image_embeds.shape[1]} image tokens (aspect kept), "
        f"SAM3 {model.config.image_size}x{model.config.image_size}")
    say(f"encode_image {t1 - t0:.1f} s; keyframe (answer of {max_new_tokens} tokens, "
        f"{len(out.phrases[0])} query blocks, SAM3 per phrase) {t2 - t1:.1f} s")
    say(f"answer: {out.answers[0]!r}")
    say(f"outputs: mask_logits {tuple(out.mask_logits.shape)}, scores {tuple(out.scores.shape)}; finite: "
        f"{bool(torch.isfinite(out.mask_logits.float()).all() and torch.isfinite(out.scores.float()).all())}")
    say(f"peak RSS (whole run): {peak_rss_gb():.2f} GB")
    say("note: the scripted answer needs an untied lm_head (311 M parameters more than the published model, "
        "whose lm_head is its tied embedding table); without it and facebook/sam3's unused CLIP the total is ~2.64 B")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/model_full.yaml")
    parser.add_argument("--sam3-size", type=int, default=1008, help="SAM3 input side (default 1008, its own)")
    parser.add_argument("--vlm-size", type=int, default=None, help="VLM input side (default: the config's)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--instructions", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--official", action="store_true",
                        help="the published InstructSAM-2B layout in reference mode instead (K = 10)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official:
        report = run_official(args.config, getattr(torch, args.dtype))
    else:
        report = run(args.config, args.sam3_size, args.vlm_size, getattr(torch, args.dtype), args.instructions)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()

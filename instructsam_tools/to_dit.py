"""Turn a one-pass InstructSAM directory into a DIT-mode one (deep instruction tuning: the instruction inside SAM3's
image encoder), every existing weight unchanged and the DIT projections new, ready for training.

    python -m instructsam_tools.to_dit SRC OUT --variant layer_wise [--text-source sam3|vlm] [--frozen-encoder]
        [--sam3-tokenizer DIR]

--variant end_to_end (E-DIT), layer_wise (L-DIT) or none (SAM3's default text prompting, the baseline).
--text-source sam3 prompts with SAM3's own text encoder, which needs SAM3's tokenizer: --sam3-tokenizer names a
directory holding it (facebook/sam3's own); without it a tiny stack (a SAM3 text vocabulary of at most 4,096) gets
a byte-level BPE of that size trained here, as the tiny VLM's is.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers import initialization as init

from instructsam.config import DIT_TEXT_SOURCES, DIT_VARIANTS
from instructsam.dit_encoder import DITEncoder
from instructsam.errors import CheckpointError
from instructsam.modeling import InstructSAMModel
from instructsam.tokenizer import QWEN_SPECIAL_TOKENS, train_tiny_tokenizer

TINY_TEXT_VOCAB = 4096


def tiny_sam3_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE whose ids all fit SAM3's text embedding table of `vocab_size` rows."""
    tokenizer = train_tiny_tokenizer(vocab_size - (len(QWEN_SPECIAL_TOKENS) - 1), seed=seed)
    tokenizer.pad_token = "<|endoftext|>"
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tiny SAM3 tokenizer has {len(tokenizer)} tokens for a vocabulary of {vocab_size}")
    return tokenizer


def to_dit(src: str | Path, out: str | Path, variant: str, text_source: str = "sam3", frozen_encoder: bool = False,
           sam3_tokenizer: str | Path | None = None, seed: int = 0) -> Path:
    if variant not in DIT_VARIANTS:
        raise ValueError(f"variant must be one of {DIT_VARIANTS}, got {variant!r}")
    if text_source not in DIT_TEXT_SOURCES:
        raise ValueError(f"text source must be one of {DIT_TEXT_SOURCES}, got {text_source!r}")
    model = InstructSAMModel.from_pretrained(str(src))
    cfg = model.config
    if cfg.inference_mode != "one_pass":
        raise CheckpointError(f"{src}: inference_mode {cfg.inference_mode!r}; to_dit starts from a one-pass model")
    if text_source == "sam3":
        vocab = cfg.sam3_config.detector_config.text_config.vocab_size
        if sam3_tokenizer is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(sam3_tokenizer), local_files_only=True)
        elif vocab <= TINY_TEXT_VOCAB:
            tokenizer = tiny_sam3_tokenizer(vocab, seed)
        else:
            raise CheckpointError(f"SAM3's text encoder has a vocabulary of {vocab}: pass --sam3-tokenizer with the "
                                  f"directory of its tokenizer (facebook/sam3's)")
        if len(tokenizer) > vocab:
            raise CheckpointError(f"SAM3 tokenizer has {len(tokenizer)} tokens, more than the text encoder's {vocab}")
        model.sam3_tokenizer = tokenizer
    cfg.inference_mode, cfg.dit_variant, cfg.dit_text_source = "dit", variant, text_source
    # DIT as defined: SAM3's decoder scores, and the words are SAM3's text encoder's or the VLM's states in
    # context; a one-pass model's score_from_masks / embedding prompt would leave the DIT rows on another design
    cfg.score_from_masks, cfg.prompt_source = False, "hidden"
    cfg.dit_freeze_encoder, cfg.model_version = frozen_encoder, ""
    cfg.check_settings()
    vit = model.detector.vision_encoder.backbone.config
    torch.manual_seed(seed)
    model.dit = DITEncoder(variant, cfg.sam3_hidden_size, vit.hidden_size, vit.num_hidden_layers, frozen_encoder)
    model.dit.reset_parameters(cfg.initializer_range, init)
    model.save_pretrained(str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.to_dit", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="one-pass InstructSAM directory")
    parser.add_argument("out", help="DIT-mode InstructSAM directory to write")
    parser.add_argument("--variant", choices=DIT_VARIANTS, default="layer_wise")
    parser.add_argument("--text-source", choices=DIT_TEXT_SOURCES, default="sam3")
    parser.add_argument("--frozen-encoder", action="store_true", help="keep SAM3's ViT frozen (DIT's * rows)")
    parser.add_argument("--sam3-tokenizer", help="directory of SAM3's tokenizer (facebook/sam3's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(to_dit(args.src, args.out, args.variant, args.text_source, args.frozen_encoder, args.sam3_tokenizer,
                     args.seed))
    except (CheckpointError, ValueError, OSError) as err:
        parser.exit(2, f"to_dit: error: {err}\n")


if __name__ == "__main__":
    main()

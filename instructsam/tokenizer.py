"""Tokenizers: train the tiny byte-level BPE offline, and add InstructSAM's query tokens to any Qwen tokenizer.

No pretrained tokenizer can be downloaded here, so the tiny VLM gets a small BPE trained on instruction-like
text. It uses Qwen2's pre-tokenizer and byte-level alphabet (any string encodes) and is wrapped as a real
`Qwen2Tokenizer`, so the tiny checkpoint loads through exactly the same `AutoTokenizer` path as Qwen3-VL.
"""
from __future__ import annotations

import itertools
import json
import random

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from instructsam.errors import CheckpointError

# Qwen3-VL's chat and vision special tokens (the subset InstructSAM uses, in Qwen's order).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QUERY_TOKEN_FORMAT = "<inst_q_{}>"

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
           "gray", "cyan", "magenta", "dark", "light", "bright", "pale"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "ellipse", "disk", "ring", "cross", "diamond",
          "hexagon", "blob", "shape", "object", "thing", "item", "cup", "mug", "bottle", "box", "tool", "hammer",
          "person", "chair", "table", "bowl", "plate", "ball", "car", "dog", "cat", "sink", "door", "book"]
SIZES = ["small", "smallest", "large", "largest", "big", "biggest", "tiny", "huge", "medium", "tall", "short",
         "wide", "narrow", "long"]
SPATIAL = ["left of", "right of", "above", "below", "next to", "near", "far from", "closest to", "furthest from",
           "on top of", "under", "behind", "in front of", "between", "inside", "outside", "leftmost", "rightmost",
           "topmost", "bottom", "top", "middle", "center", "corner", "edge"]
VERBS = ["segment", "find", "pick up", "grab", "show", "select", "highlight", "locate", "mark", "track", "point to"]
QUANT = ["the", "every", "all", "each", "any", "both", "the two", "the three", "one", "none of the", "only the"]
EXTRA = ["except", "and", "or", "not", "that is", "which is", "with", "without", "the robot", "the camera",
         "please", "image", "video", "frame", "instance", "objects", "instances", "that", "is", "are", "there",
         "what", "which", "where", "could", "would", "can", "you", "me", "I", "need", "something", "to", "hold",
         "water", "drink", "cut", "sit", "on", "in", "of", "a", "an", "it", "them", "those", "these", "coloured",
         "colored", "same", "different", "than", "more", "less", "most", "least", "0", "1", "2", "3", "4", "5"]


def instruction_corpus(num_lines: int = 4000, seed: int = 0) -> list[str]:
    """Synthetic object instructions (colours, shapes, sizes, spatial words) to train the tiny BPE on."""
    rng = random.Random(seed)
    pick = rng.choice
    lines = []
    for _ in range(num_lines):
        thing = f"{pick(SIZES)} {pick(COLOURS)} {pick(SHAPES)}"
        other = f"{pick(COLOURS)} {pick(SHAPES)}"
        form = rng.randrange(6)
        if form == 0:
            line = f"{pick(VERBS)} {pick(QUANT)} {thing}"
        elif form == 1:
            line = f"{pick(VERBS)} {pick(QUANT)} {thing} {pick(SPATIAL)} the {other}"
        elif form == 2:
            line = f"{pick(QUANT)} {pick(SHAPES)}s {pick(EXTRA)} the {other}"
        elif form == 3:
            line = f"which {pick(SHAPES)} could {pick(EXTRA)} {pick(EXTRA)}? {pick(VERBS)} it."
        elif form == 4:
            line = " ".join(pick(EXTRA + SPATIAL + COLOURS) for _ in range(rng.randint(3, 9)))
        else:
            line = (f"{pick(VERBS).capitalize()} {pick(QUANT)} {pick(COLOURS)} {pick(SHAPES)}s, "
                    f"{pick(EXTRA)} the {thing}.")
        lines.append(line)
    words = sorted(set(itertools.chain(COLOURS, SHAPES, SIZES, SPATIAL, VERBS, QUANT, EXTRA)))
    return lines + words + [w.capitalize() for w in words]


def train_tiny_tokenizer(vocab_size: int = 1024, seed: int = 0, corpus: list[str] | None = None) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen2's pre-tokenizer and wrap it as a Qwen2Tokenizer with Qwen's special tokens.

    Deterministic for a given seed and vocab_size (the corpus is generated from the seed).
    """
    corpus = corpus if corpus is not None else instruction_corpus(seed=seed)
    bpe = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=_bpe_merges(bpe), errors="replace", model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                          for t in QWEN_SPECIAL_TOKENS[1:]]})
    return tok


def _bpe_merges(bpe: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def add_query_tokens(tokenizer: PreTrainedTokenizerBase, num_queries: int) -> list[int]:
    """Add `<inst_q_0>`..`<inst_q_{K-1}>` as special tokens (idempotent) and return their ids in order."""
    names = [QUERY_TOKEN_FORMAT.format(i) for i in range(num_queries)]
    missing = [n for n in names if n not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(n, special=True, normalized=False) for n in missing]},
            replace_extra_special_tokens=False)
    return [tokenizer.convert_tokens_to_ids(n) for n in names]


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of the Qwen special tokens InstructSAM's prompt layout needs; errors name a missing one."""
    vocab = tokenizer.get_vocab()
    out = {}
    for name in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|endoftext|>"):
        if name not in vocab:
            raise CheckpointError(f"tokenizer lacks the Qwen special token {name!r}; is this a Qwen3-VL tokenizer?")
        out[name] = vocab[name]
    return out


__all__ = ["train_tiny_tokenizer", "add_query_tokens", "special_token_ids", "instruction_corpus",
           "QWEN_SPECIAL_TOKENS", "QUERY_TOKEN_FORMAT"]

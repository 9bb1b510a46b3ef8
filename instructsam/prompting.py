"""Token layout of InstructSAM's VLM input, shared by every instruction on an image:

    prefix (same for all instructions on an image, so its KV cache is reused):
        <|im_start|>user\\n<|vision_start|><|image_pad|> x T<|vision_end|>
    suffix (one per instruction, right-padded in a batch):
        {template before}{instruction}{template after}<|im_end|>\\n<|im_start|>assistant\\n<inst_q_0>..<inst_q_K-1>

The instruction's own tokens (not the template's) become SAM3's prompt features; the query tokens are
placeholders whose embeddings are replaced by the learned query bank.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from instructsam.attention import CAUSAL, PAD, QUERY
from instructsam.errors import InstructionError
from instructsam.templates import get_template
from instructsam.tokenizer import special_token_ids


@dataclass
class TokenizedInstructions:
    """N instructions as right-padded suffixes (see module docstring)."""

    suffix_ids: torch.Tensor  # (N, S) long, pad id in padding
    suffix_kinds: torch.Tensor  # (N, S) PAD / CAUSAL / QUERY
    query_index: torch.Tensor  # (N, K) position of each query token in the suffix
    prompt_index: torch.Tensor  # (N, Lp) positions of the instruction's own tokens (0 where padded)
    prompt_mask: torch.Tensor  # (N, Lp) bool, True for real instruction tokens


class PromptBuilder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, query_token_ids: list[int], max_chars: int,
                 max_tokens: int, use_templates: bool = True):
        """use_templates=False: the raw instruction (the reference mode's prompt); query_token_ids may be empty."""
        self.tokenizer = tokenizer
        self.use_templates = use_templates
        self.query_token_ids = list(query_token_ids)
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        ids = special_token_ids(tokenizer)
        self.im_start, self.im_end = ids["<|im_start|>"], ids["<|im_end|>"]
        self.vision_start, self.vision_end = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.image_pad = ids["<|image_pad|>"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["<|endoftext|>"]
        self._piece = lru_cache(maxsize=64)(self._encode_piece)

    def _encode_piece(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids) if text else ()

    def prefix_ids(self, num_image_tokens: int) -> list[int]:
        return [self.im_start, *self._piece("user\n"), self.vision_start,
                *([self.image_pad] * num_image_tokens), self.vision_end]

    def check_instruction(self, text: object, i: int) -> str:
        if not isinstance(text, str):
            raise InstructionError(f"instruction {i} must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InstructionError(f"instruction {i} is empty (or only whitespace)")
        if len(text) > self.max_chars:
            raise InstructionError(f"instruction {i} has {len(text)} characters, more than the limit of "
                                   f"{self.max_chars} (max_instruction_chars)")
        return text.strip()

    def encode(self, instructions: list[str], task: str | list[str],
               with_queries: bool = True) -> TokenizedInstructions:
        """task: one template task for all instructions, or one per instruction."""
        if isinstance(instructions, str):
            raise InstructionError("instructions must be a list of strings, got a single str; wrap it in a list")
        if len(instructions) == 0:
            raise InstructionError("got an empty list of instructions")
        tasks = [task] * len(instructions) if isinstance(task, str) else list(task)
        if len(tasks) != len(instructions):
            raise InstructionError(f"got {len(tasks)} tasks for {len(instructions)} instructions")
        tail = (self.im_end, *self._piece("\n"), self.im_start, *self._piece("assistant\n"))
        queries = tuple(self.query_token_ids) if with_queries else ()
        rows, prompt_spans = [], []
        for i, raw in enumerate(instructions):
            template = get_template(tasks[i])
            before, after = (self._piece(template.before), self._piece(template.after)) if self.use_templates \
                else ((), ())
            text = self.check_instruction(raw, i)
            if not self.use_templates:
                text = raw  # the reference's prompt carries the instruction verbatim (checked above)
            text_ids = self._encode_piece(text)  # not cached: user text is unbounded
            if len(text_ids) > self.max_tokens:
                raise InstructionError(f"instruction {i} has {len(text_ids)} tokens, more than the limit of "
                                       f"{self.max_tokens} (max_instruction_tokens)")
            rows.append((*before, *text_ids, *after, *tail, *queries))
            prompt_spans.append((len(before), len(text_ids)))
        n, s = len(rows), max(len(r) for r in rows)
        k = len(queries)
        suffix_ids = torch.full((n, s), self.pad_id, dtype=torch.long)
        kinds = torch.full((n, s), PAD, dtype=torch.long)
        query_index = torch.zeros((n, k), dtype=torch.long)
        lp = max(length for _, length in prompt_spans)
        prompt_index = torch.zeros((n, lp), dtype=torch.long)
        prompt_mask = torch.zeros((n, lp), dtype=torch.bool)
        for r, (row, (start, length)) in enumerate(zip(rows, prompt_spans)):
            suffix_ids[r, : len(row)] = torch.tensor(row)
            kinds[r, : len(row) - k] = CAUSAL
            kinds[r, len(row) - k: len(row)] = QUERY
            query_index[r] = torch.arange(len(row) - k, len(row))
            prompt_index[r, :length] = torch.arange(start, start + length)
            prompt_mask[r, :length] = True
        return TokenizedInstructions(suffix_ids, kinds, query_index, prompt_index, prompt_mask)


__all__ = ["PromptBuilder", "TokenizedInstructions"]

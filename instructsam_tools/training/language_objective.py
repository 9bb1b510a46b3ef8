"""The trainer's third objective (`objective: language`): next-token training of the VLM on scene language.

Stage 2 of the pretrained-stages recipe (docs/pretraining.md). The published model starts from a Qwen3-VL whose
vision tower and language model already tie words to what the image shows; the tiny VLM is random. Here it learns
that on the synthetic scenes' questions and answers (data.scene_questions): the image prefix, the question as the
user turn, and the answer as the assistant turn,

    <|im_start|>user\\n<|vision_start|>(image)<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

the same prefix and chat layout InstructSAM's instructions use (prompting.PromptBuilder, without a template and
without queries), through the same VLM pass (`InstructSAMModel.language_model_pass`). The loss is cross-entropy on
the answer's tokens and its closing <|im_end|>.

A question counts as answered when every one of those tokens is the argmax given the ones before it; that is
exactly when greedy decoding from the question writes the answer and stops, so the accuracy needs no decoding loop.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from instructsam.attention import CAUSAL, PAD
from instructsam.modeling import InstructSAMModel
from instructsam.prompting import PromptBuilder, TokenizedInstructions

IGNORE = -100


def question_prompts(model: InstructSAMModel) -> PromptBuilder:
    """The model's prompt layout for a plain question: no task template, no query tokens."""
    cfg = model.config
    return PromptBuilder(model.tokenizer, [], cfg.max_instruction_chars, cfg.max_instruction_tokens,
                         use_templates=False)


def answer_logits(model: InstructSAMModel, prompts: PromptBuilder, features, questions: list[str],
                  answers: list[str], image_index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token logits over the question + answer suffixes (N, S - 1, V) and their labels
    (N, S - 1): the next token where it belongs to the answer (or its <|im_end|>), IGNORE elsewhere.
    prompts: question_prompts(model), built once by the caller."""
    tokens = prompts.encode(questions, task="referring", with_queries=False)
    rows, starts = [], []
    for n, answer in enumerate(answers):
        question = tokens.suffix_ids[n][tokens.suffix_kinds[n] != PAD].tolist()
        reply = prompts.tokenizer(answer, add_special_tokens=False).input_ids + [prompts.im_end]
        rows.append(question + reply)
        starts.append(len(question))
    n, width = len(rows), max(len(r) for r in rows)
    ids = torch.full((n, width), prompts.pad_id, dtype=torch.long)
    kinds = torch.full((n, width), PAD, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for r, (row, start) in enumerate(zip(rows, starts)):
        ids[r, :len(row)] = torch.tensor(row)
        kinds[r, :len(row)] = CAUSAL
        labels[r, start:len(row)] = ids[r, start:len(row)]
    empty = torch.zeros(n, 0, dtype=torch.long)
    suffixes = TokenizedInstructions(ids, kinds, empty, empty, empty.bool())
    index = torch.as_tensor(image_index, dtype=torch.long, device=model.device)
    hidden, offset = model.language_model_pass(features, suffixes, index, reuse_prefix=False)
    logits = model.vlm.lm_head(hidden[:, offset:])
    return logits[:, :-1], labels[:, 1:].to(logits.device)


class LanguageStep(nn.Module):
    """Encode the images once and score every question's answer on them: one module call, as DDP needs."""

    def __init__(self, model: InstructSAMModel):
        super().__init__()
        self.model = model
        self.prompts = question_prompts(model)

    def forward(self, images, questions: list[str], answers: list[str], image_index: list[int]):
        features = self.model.encode_image(images, tracker=False)
        return answer_logits(self.model, self.prompts, features, questions, answers, image_index)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the answer tokens (the IGNORE positions left out)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction=reduction)


def answered(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every answer token of the row is the argmax (greedy decoding would write the answer)."""
    wrong = (logits.argmax(-1) != labels) & (labels != IGNORE)
    return ~wrong.any(dim=1)


class LanguageCriterion(nn.Module):
    """Cross-entropy over the answer tokens (mean per token); token and answer accuracy for the log."""

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets=None) -> dict[str, torch.Tensor]:
        logits, labels = outputs
        loss = answer_loss(logits, labels)
        with torch.no_grad():
            scored = labels != IGNORE
            token_acc = ((logits.argmax(-1) == labels) & scored).sum() / scored.sum().clamp(min=1)
            answer_acc = answered(logits, labels).float().mean()
        return {"loss": loss, "token_acc": token_acc, "answer_acc": answer_acc}


@torch.no_grad()
def evaluate_answers(model: InstructSAMModel, dataset, max_samples: int | None = None,
                     images_per_batch: int = 4) -> dict:
    """Loss and answer accuracy (greedy decoding's exact match, see the module docstring) on the first
    `max_samples` questions of `dataset`, overall and per question kind ("acc/colour", ...)."""
    from instructsam_tools.data.batching import collate_questions, image_groups

    was_training = model.training
    model.eval()
    prompts = question_prompts(model)
    groups = image_groups(dataset)
    if max_samples is not None:
        groups = [g for g in groups if g[-1] < max_samples]
    right, total, losses, tokens = defaultdict(int), defaultdict(int), 0.0, 0
    for start in range(0, len(groups), images_per_batch):
        batch = collate_questions(dataset, groups[start:start + images_per_batch])
        features = model.encode_image(batch.images, tracker=False)
        logits, labels = answer_logits(model, prompts, features, batch.questions, batch.answers, batch.image_index)
        losses += float(answer_loss(logits, labels, reduction="sum"))
        tokens += int((labels != IGNORE).sum())
        for kind, ok in zip(batch.kinds, answered(logits, labels).tolist()):
            for key in ("all", kind):
                total[key] += 1
                right[key] += int(ok)
    model.train(was_training)
    summary = {"loss": losses / max(tokens, 1), "answer_acc": right["all"] / max(total["all"], 1),
               "questions": total["all"]}
    summary.update({f"acc/{k}": right[k] / total[k] for k in sorted(total) if k != "all"})
    return summary


__all__ = ["IGNORE", "question_prompts", "answer_logits", "LanguageStep", "LanguageCriterion", "answer_loss",
           "answered", "evaluate_answers"]

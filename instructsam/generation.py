"""The published InstructSAM's inference (`inference_mode: reference`), as a mode of InstructSAMModel.

The VLM answers first. Greedy decoding with a KV cache writes each target phrase between <|object_ref_start|> and
<|object_ref_end|>; whenever <|object_ref_end|> is fed, the step's input becomes a block of K + 3 embeddings

    E(<|object_ref_end|>)  E(<|mask_start|>)  Q_1 ... Q_K  E(<|mask_end|>)      (Q: the learned query bank)

whose attention rows are: the first token sees the past and itself, the second the past, the first and itself, the
queries and <|mask_end|> the past and the whole block. The queries' final (normed) states are kept; decoding goes on
from <|mask_end|>'s logits. The block's tokens are never part of the answer, only of the cache.

Positions (config.reference_positions):
    sequential  the reference's inference: every token a 1-D position (the same on Qwen3-VL's three rope axes),
                counted by an attention-mask length that each block grows by K + 2 beyond its own token, so a block
                fed when that length is n (its <|object_ref_end|> counted) sits at n .. n + K + 2 and the next token
                at n + K + 2 again
    mrope       its training: Qwen3-VL's 3-D positions for the prompt, then one step per fed embedding

Then, per phrase i (in order) with block i: SAM3's prompt features are the projector's MLP on the *input
embeddings* of [ref_start, phrase, ref_end] (at most max_phrase_tokens, padded and masked), its decoder queries the
MLP of block i's query states, its reference boxes the learned ones; SAM3 decodes without its presence token and a
slot's score is sigmoid(its last-layer logit). If the phrases and blocks do not pair up, the instruction has no
slots (as the reference returns no masks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from instructsam.attention import CAUSAL, PAD
from instructsam.outputs import ImageFeatures, InstanceSetOutput
from instructsam.prompting import TokenizedInstructions
from instructsam.sam3_queries import decode_queries, encode_prompted, select_vision


@dataclass
class Answer:
    """What the VLM wrote for one instruction, and the query states of each block it opened."""

    ids: list[int]  # generated tokens (prompt excluded; block tokens are not tokens of the answer)
    query_states: torch.Tensor  # (n_blocks, K, d_vlm)
    text: str
    phrases: list[list[int]]  # per phrase: [ref_start, phrase tokens ..., ref_end], truncated


def visible(rows: int, past: int, kind: str, device, dtype) -> torch.Tensor:
    """(1, 1, rows, past + rows) float additive mask: 'causal' rows see the past and the rows up to themselves;
    'block' is the query block's rule (rows 0 and 1 causal, the rest see the whole block)."""
    allowed = torch.ones(rows, past + rows, dtype=torch.bool, device=device)
    tri = torch.tril(torch.ones(rows, rows, dtype=torch.bool, device=device))
    if kind == "block":
        tri[2:] = True
    allowed[:, past:] = tri
    mask = torch.zeros(rows, past + rows, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


class _Positions:
    """Rotary positions of each fed embedding, by config.reference_positions (module docstring)."""

    def __init__(self, mode: str, prompt_positions: torch.Tensor, num_queries: int):
        self.mode, self.k = mode, num_queries
        self.mask_len = prompt_positions.shape[-1]  # sequential: the attention-mask length the reference counts
        self.next = int(prompt_positions.max()) + 1  # mrope: the next free position

    def token(self, device) -> torch.Tensor:
        if self.mode == "sequential":
            self.mask_len += 1
            pos = torch.tensor([self.mask_len - 1], device=device)
        else:
            pos = torch.tensor([self.next], device=device)
            self.next += 1
        return pos.view(1, 1, 1).expand(3, 1, 1)

    def block(self, device) -> torch.Tensor:
        n = self.k + 3
        if self.mode == "sequential":
            self.mask_len += 1  # the <|object_ref_end|> being fed
            pos = self.mask_len + torch.arange(n, device=device)  # one past its natural place
            self.mask_len += self.k + 2
        else:
            pos = self.next + torch.arange(n, device=device)
            self.next += n
        return pos.view(1, 1, n).expand(3, 1, n)


def sequential_positions(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (3, B, L) positions 0..L-1 on every rope axis (the reference's inference)."""
    pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return pos[None].expand(3, -1, -1)


def generate_answer(model, features: ImageFeatures, image: int, suffix_ids: torch.Tensor,
                    max_new_tokens: int) -> Answer:
    """Greedy decoding of one instruction on image `image` of `features` (suffix_ids: (S,) the instruction and
    the assistant header, as PromptBuilder.encode lays them out), with a query block after each phrase."""
    cfg, lm, device = model.config, model.language_model, model.device
    embed = lm.get_input_embeddings()
    k = cfg.num_queries
    kv = model._prefix_kv(features)
    cache = DynamicCache(ddp_cache_data=[(key[image:image + 1], value[image:image + 1]) for key, value in kv],
                         config=model.vlm.config.text_config)
    prefix_ids = torch.tensor(model.prompts.prefix_ids(features.vlm_image_embeds.shape[1]), device=device)
    suffix_ids = suffix_ids.to(device)
    full = torch.cat([prefix_ids, suffix_ids])[None]
    prompt_positions = model._rope_positions(full, torch.full_like(full, CAUSAL), features.vlm_grid_thw[image:image + 1])
    positions = _Positions(cfg.reference_positions, prompt_positions, k)
    p = len(prefix_ids)
    embeds = embed(suffix_ids[None])
    out = lm(inputs_embeds=embeds, attention_mask=visible(len(suffix_ids), p, "causal", device, embeds.dtype),
             position_ids=prompt_positions[:, :, p:], past_key_values=cache, use_cache=True)
    hidden = out.last_hidden_state[:, -1]
    seen = full[0].tolist()
    generated, blocks = [], []
    eos = set(cfg.eos_token_ids)
    for _ in range(max_new_tokens):
        token = _next_token(model, hidden, seen)
        if token in eos:
            break
        generated.append(token)
        seen.append(token)
        if len(generated) == max_new_tokens:
            break  # as transformers' generate: the last token is returned, never fed (no block after it)
        past = cache.get_seq_length()
        if token == cfg.ref_end_token_id:
            ids = torch.tensor([[cfg.ref_end_token_id, cfg.mask_start_token_id]], device=device)
            head = embed(ids)
            tail = embed(torch.tensor([[cfg.mask_end_token_id]], device=device))
            block = torch.cat([head, model.query_bank[None].to(head.dtype), tail], dim=1)
            out = lm(inputs_embeds=block, attention_mask=visible(k + 3, past, "block", device, block.dtype),
                     position_ids=positions.block(device), past_key_values=cache, use_cache=True)
            blocks.append(out.last_hidden_state[0, 2:2 + k])
        else:
            step = embed(torch.tensor([[token]], device=device))
            out = lm(inputs_embeds=step, attention_mask=visible(1, past, "causal", device, step.dtype),
                     position_ids=positions.token(device), past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    states = torch.stack(blocks) if blocks else torch.zeros(0, k, cfg.vlm_hidden_size, device=device)
    text = model.tokenizer.decode(generated, skip_special_tokens=False)
    phrases = phrase_ids(suffix_ids.tolist() + generated, cfg.ref_start_token_id, cfg.ref_end_token_id,
                         cfg.max_phrase_tokens)
    return Answer(ids=generated, query_states=states, text=text, phrases=phrases)


def _next_token(model, hidden: torch.Tensor, seen: list[int]) -> int:
    logits = model.vlm.lm_head(hidden)[0].float()
    penalty = model.config.repetition_penalty
    if penalty != 1.0:  # as transformers' RepetitionPenaltyLogitsProcessor, over the prompt and the answer
        ids = torch.tensor(sorted(set(seen)), device=logits.device)
        score = logits[ids]
        logits[ids] = torch.where(score < 0, score * penalty, score / penalty)
    return int(logits.argmax())


def phrase_ids(ids: list[int], start: int, end: int, limit: int) -> list[list[int]]:
    """Every [start, ..., end] run in `ids`, in order, each truncated to `limit` tokens; a start inside an open
    run belongs to that run (as the reference reads them)."""
    out, opened = [], None
    for i, token in enumerate(ids):
        if token == start and opened is None:
            opened = i
        elif token == end and opened is not None:
            out.append(ids[opened:i + 1][:limit])
            opened = None
    return out


def reference_segment(model, features: ImageFeatures, instructions: list[str], image_index: torch.Tensor,
                      tokens: TokenizedInstructions, max_new_tokens: int) -> InstanceSetOutput:
    """`segment` in reference mode: per instruction, its answer and n phrases x K slots; the N instructions'
    slots are padded to the longest with empty slots (score 0, mask logits -inf)."""
    cfg, device = model.config, model.device
    answers, per_instruction = [], []
    for n, image in enumerate(image_index.tolist()):
        suffix = tokens.suffix_ids[n][tokens.suffix_kinds[n] != PAD]  # drop the batch's right padding
        answer = generate_answer(model, features, image, suffix, max_new_tokens)
        answers.append(answer)
        if answer.phrases and len(answer.phrases) == len(answer.query_states):
            per_instruction.append(_decode_phrases(model, features, image, answer))
        else:
            per_instruction.append(None)
    h, w = features.sam3.fpn_hidden_states[0].shape[-2:]  # SAM3's mask resolution (the 4x FPN level)
    slots = max([0] + [len(d["logits"]) for d in per_instruction if d is not None])
    n_ins = len(instructions)
    mask_logits = torch.full((n_ins, slots, h, w), float("-inf"), device=device)
    boxes = torch.zeros(n_ins, slots, 4, device=device)
    logits = torch.full((n_ins, slots), float("-inf"), device=device)
    for n, decoded in enumerate(per_instruction):
        if decoded is not None:
            s = len(decoded["logits"])
            mask_logits[n, :s], boxes[n, :s], logits[n, :s] = decoded["masks"], decoded["boxes"], decoded["logits"]
    return InstanceSetOutput(
        mask_logits=mask_logits, boxes=boxes, logits=logits, scores=logits.sigmoid(), image_index=image_index,
        answers=[a.text for a in answers],
        phrases=[[model.tokenizer.decode(p[1:-1] if p[-1] == cfg.ref_end_token_id else p[1:]) for p in a.phrases]
                 for a in answers])  # a phrase truncated at max_phrase_tokens has lost its end marker


def _decode_phrases(model, features: ImageFeatures, image: int, answer: Answer) -> dict:
    """SAM3 on the image once per phrase, without presence: (n * K) masks, boxes (xyxy) and logits."""
    device = model.device
    n = len(answer.phrases)
    width = max(len(p) for p in answer.phrases)
    ids = torch.zeros(n, width, dtype=torch.long, device=device)  # padded with id 0, masked
    mask = torch.zeros(n, width, dtype=torch.bool, device=device)
    for i, phrase in enumerate(answer.phrases):
        ids[i, :len(phrase)] = torch.tensor(phrase, device=device)
        mask[i, :len(phrase)] = True
    dtype = model.projector.prompt_mlp.fc1.weight.dtype
    prompt = model.projector.prompt(model.language_model.get_input_embeddings()(ids).to(dtype))
    queries, reference_boxes = model.projector.queries(answer.query_states.to(dtype))
    sam_dtype = model.detector.dtype
    index = torch.full((n,), image, dtype=torch.long, device=device)
    prompted = encode_prompted(model.detector, select_vision(features.sam3, index), prompt.to(sam_dtype), mask)
    det = decode_queries(model.detector, prompted, queries.to(sam_dtype), reference_boxes.to(sam_dtype),
                         presence=False)
    return {"masks": det.pred_masks.flatten(0, 1).float(), "boxes": det.pred_boxes.flatten(0, 1).float(),
            "logits": det.pred_logits.flatten(0, 1).float()}


__all__ = ["Answer", "generate_answer", "reference_segment", "phrase_ids", "visible", "sequential_positions"]

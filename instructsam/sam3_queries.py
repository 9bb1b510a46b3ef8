"""SAM3's detector driven by external queries: the VLM's K query states become SAM3 DETR-decoder queries (+ a
reference box each) and the instruction token states become SAM3's prompt features.

`detect_with_queries` is `Sam3Model.forward`'s text-prompt path with the decoder's own `query_embed` /
`reference_points` replaced by arguments. It calls SAM3's unchanged modules (DETR encoder, decoder layers,
`ref_point_head`, `_get_rpb_matrix`, `box_head`, presence head, `dot_product_scoring`, mask decoder) with SAM3's
weights; fed SAM3's own embeddings it reproduces `Sam3Model.forward` exactly (tested). With presence=False it is the
published InstructSAM's decoder: no presence token among the queries (and no presence logit), the box
relative-position bias unpadded.

Two projectors map VLM states into SAM3: QueryProjector (the one-pass mode's: GELU MLPs with LayerNorm, a per-query
box offset) and ReferenceProjector (the published model's: d -> d -> 256 ReLU MLPs, no norm, fixed reference boxes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3Model,
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)


@dataclass
class DetectorOutput:
    """SAM3 detector outputs for B (image, prompt) pairs with K external queries."""

    pred_masks: torch.Tensor  # (B, K, h, w) mask logits at SAM3's mask resolution
    pred_boxes: torch.Tensor  # (B, K, 4) normalised xyxy, last decoder layer
    pred_logits: torch.Tensor  # (B, K) per-query classification logits, last layer
    presence_logits: torch.Tensor | None  # (B, 1) presence-token logit, last layer (None: decoded without presence)
    all_pred_boxes: torch.Tensor  # (L, B, K, 4) normalised xyxy per decoder layer (auxiliary losses)
    all_pred_logits: torch.Tensor  # (L, B, K)
    all_presence_logits: torch.Tensor | None  # (L, B, 1)
    semantic_seg: torch.Tensor  # (B, 1, h, w)


def select_vision(vision: Sam3VisionEncoderOutput, index: torch.Tensor) -> Sam3VisionEncoderOutput:
    """SAM3 vision features of the images `index` points at (one entry per prompt)."""
    fpn, pos = vision.fpn_hidden_states, vision.fpn_position_encoding  # None on tracker-only features
    return Sam3VisionEncoderOutput(
        last_hidden_state=vision.last_hidden_state[index],
        fpn_hidden_states=None if fpn is None else tuple(f[index] for f in fpn),
        fpn_position_encoding=None if pos is None else tuple(p[index] for p in pos),
    )


def _decode(detector: Sam3Model, vision_features, text_features, vision_pos, text_mask, spatial_shapes,
            query_embeds: torch.Tensor, reference_boxes: torch.Tensor, presence: bool = True):
    """`Sam3DetrDecoder.forward` with external (B, K, d) queries and (B, K, 4) sigmoid-space reference boxes;
    presence=False leaves SAM3's presence token out (returns None for its logits)."""
    dec = detector.detr_decoder
    batch_size = vision_features.shape[0]
    lead = 1 if presence else 0  # rows ahead of the queries
    if presence:
        presence_token = dec.presence_token.weight.unsqueeze(0).expand(batch_size, -1, -1)
        hidden_states = torch.cat([presence_token, query_embeds], dim=1)
    else:
        hidden_states = query_embeds
    text_cross_attn_mask = None
    if text_mask is not None:
        text_cross_attn_mask = create_bidirectional_mask(
            config=dec.config, inputs_embeds=hidden_states, attention_mask=text_mask,
            encoder_hidden_states=text_features)

    outputs, boxes, presences = [], [reference_boxes], []
    for layer in dec.layers:
        query_sine_embed = dec.position_encoding.encode_boxes(reference_boxes)
        query_pos = dec.ref_point_head(query_sine_embed)
        vision_cross_attn_mask = None
        if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
            rpb = dec._get_rpb_matrix(reference_boxes, (spatial_shapes[0, 0], spatial_shapes[0, 1]))
            vision_cross_attn_mask = F.pad(rpb, (0, 0, lead, 0), mode="constant", value=0) if lead else rpb
        step = layer if presence else _layer_without_presence
        hidden_states = step(
            hidden_states, query_pos=query_pos, text_features=text_features, vision_features=vision_features,
            vision_pos_encoding=vision_pos, text_cross_attn_mask=text_cross_attn_mask,
            vision_cross_attn_mask=vision_cross_attn_mask, **({} if presence else {"layer": layer}))
        query_hidden = hidden_states[:, lead:]
        delta = dec.box_head(dec.output_layer_norm(query_hidden))
        new_boxes = (delta + inverse_sigmoid(reference_boxes)).sigmoid()
        reference_boxes = new_boxes.detach()  # as SAM3: no gradient through the box refinement chain
        outputs.append(dec.output_layer_norm(query_hidden))
        boxes.append(new_boxes)
        if presence:
            p = dec.presence_head(dec.presence_layer_norm(hidden_states[:, :1])).squeeze(-1)
            presences.append(p.clamp(min=-dec.clamp_presence_logit_max_val, max=dec.clamp_presence_logit_max_val))
    return torch.stack(outputs), torch.stack(boxes[:-1]), torch.stack(presences) if presence else None


def _layer_without_presence(hidden_states, *, layer, query_pos, text_features, vision_features, vision_pos_encoding,
                            text_cross_attn_mask, vision_cross_attn_mask):
    """`Sam3DetrDecoderLayer.forward` on its own submodules, for queries without the presence token ahead of them
    (the stock layer always prepends a zero position row for that token)."""
    def attend(attention, dropout, norm, key, value, mask):
        out, _ = attention(query=hidden_states + query_pos, key=key, value=value, attention_mask=mask)
        return norm(hidden_states + dropout(out))

    with_pos = hidden_states + query_pos
    out, _ = layer.self_attn(query=with_pos, key=with_pos, value=hidden_states, attention_mask=None)
    hidden_states = layer.self_attn_layer_norm(hidden_states + layer.self_attn_dropout(out))
    hidden_states = attend(layer.text_cross_attn, layer.text_cross_attn_dropout, layer.text_cross_attn_layer_norm,
                           text_features, text_features, text_cross_attn_mask)
    hidden_states = attend(layer.vision_cross_attn, layer.vision_cross_attn_dropout,
                           layer.vision_cross_attn_layer_norm, vision_features + vision_pos_encoding, vision_features,
                           vision_cross_attn_mask)
    return layer.mlp_layer_norm(hidden_states + layer.mlp_dropout(layer.mlp(hidden_states)))


@dataclass
class PromptedImages:
    """SAM3's DETR-encoder output for B (image, prompt) pairs: what every set of queries on them is decoded against."""

    fpn: tuple  # the FPN levels the detector uses (the coarsest dropped)
    encoded: object  # the DETR encoder's output
    prompt_features: torch.Tensor
    text_mask: torch.Tensor | None


def encode_prompted(detector: Sam3Model, vision: Sam3VisionEncoderOutput, prompt_features: torch.Tensor,
                    prompt_mask: torch.Tensor | None) -> PromptedImages:
    """SAM3's DETR encoder on B (image, prompt) pairs (arguments as `detect_with_queries`)."""
    fpn = vision.fpn_hidden_states[:-1]  # SAM3's detector drops the coarsest (0.5x) level
    fpn_pos = vision.fpn_position_encoding[:-1]
    text_mask = prompt_mask.bool() if prompt_mask is not None else None
    enc = detector.detr_encoder(vision_features=[fpn[-1]], text_features=prompt_features,
                                vision_pos_embeds=[fpn_pos[-1]], text_mask=text_mask)
    return PromptedImages(fpn=fpn, encoded=enc, prompt_features=prompt_features, text_mask=text_mask)


def detect_with_queries(detector: Sam3Model, vision: Sam3VisionEncoderOutput, prompt_features: torch.Tensor,
                        prompt_mask: torch.Tensor | None, query_embeds: torch.Tensor,
                        reference_boxes: torch.Tensor) -> DetectorOutput:
    """Run SAM3's detector on B (image, prompt) pairs with external queries.

    vision: SAM3 vision features with batch B (select per prompt with `select_vision`).
    prompt_features: (B, L, d) prompt features in SAM3's text space; prompt_mask: (B, L) bool, True = valid.
    query_embeds: (B, K, d) decoder queries; reference_boxes: (B, K, 4) normalised cxcywh in (0, 1).
    """
    return decode_queries(detector, encode_prompted(detector, vision, prompt_features, prompt_mask), query_embeds,
                          reference_boxes)


def mask_pooled_tokens(tokens: torch.Tensor, spatial_shape, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, HW, d) image tokens averaged under each of (B, K, h, w) masks' probabilities -> (B, K, d): the mean under
    a mask of at least one token cell, less for a smaller one, nothing for an empty one. The weights are detached:
    scoring must not bend the masks. spatial_shape: the token grid's (h, w), ints or a tensor."""
    weights = F.adaptive_avg_pool2d(mask_logits.detach().float().sigmoid(), tuple(int(x) for x in spatial_shape))
    weights = weights.flatten(2)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.bmm(weights.to(tokens.dtype), tokens)


def decode_queries(detector: Sam3Model, prompted: PromptedImages, query_embeds: torch.Tensor,
                   reference_boxes: torch.Tensor, presence: bool = True,
                   score_from_masks: bool = False) -> DetectorOutput:
    """SAM3's decoder, heads and mask decoder for one set of queries on already encoded (image, prompt) pairs
    (presence=False: without SAM3's presence token, as the published InstructSAM decodes). score_from_masks: the
    last layer's slots are scored on their state plus the encoder's tokens under their own mask (see
    InstructSAMConfig.score_from_masks)."""
    fpn, enc = prompted.fpn, prompted.encoded
    prompt_features, text_mask = prompted.prompt_features, prompted.text_mask
    hidden, ref_boxes, presence = _decode(
        detector, enc.last_hidden_state, enc.text_features, enc.pos_embeds_flattened, text_mask,
        enc.spatial_shapes, query_embeds, reference_boxes, presence)
    offsets = detector.detr_decoder.box_head(hidden)
    all_boxes = box_cxcywh_to_xyxy((inverse_sigmoid(ref_boxes) + offsets).sigmoid())
    masks = detector.mask_decoder(
        decoder_queries=hidden[-1], backbone_features=list(fpn), encoder_hidden_states=enc.last_hidden_state,
        prompt_features=prompt_features, prompt_mask=text_mask)
    scored = hidden  # (L, B, K, d): each layer's slots are scored on their own (the scoring is per layer)
    if score_from_masks:
        pooled = mask_pooled_tokens(enc.last_hidden_state, fpn[-1].shape[-2:], masks.pred_masks)
        scored = torch.cat([hidden[:-1], (hidden[-1] + pooled)[None]])
    all_logits = detector.dot_product_scoring(
        decoder_hidden_states=scored, text_features=enc.text_features, text_mask=text_mask).squeeze(-1)
    return DetectorOutput(
        pred_masks=masks.pred_masks, pred_boxes=all_boxes[-1], pred_logits=all_logits[-1],
        presence_logits=None if presence is None else presence[-1], all_pred_boxes=all_boxes,
        all_pred_logits=all_logits,
        all_presence_logits=presence, semantic_seg=masks.semantic_seg)


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, activation=F.gelu):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


def grid_reference_logits(num_queries: int) -> torch.Tensor:
    """Initial per-slot reference boxes spread over the image on a grid (pre-sigmoid cxcywh), so the K slots start
    attending to different places through SAM3's box relative-position bias."""
    g = math.ceil(math.sqrt(num_queries))
    k = torch.arange(num_queries, dtype=torch.get_default_dtype())  # the model's construction dtype
    cx = (torch.remainder(k, g) + 0.5) / g
    cy = (torch.div(k, g, rounding_mode="floor") + 0.5) / g
    wh = torch.full((num_queries,), min(0.9, 2.0 / g))
    return inverse_sigmoid(torch.stack([cx, cy, wh, wh], dim=-1))


class QueryProjector(nn.Module):
    """Maps VLM hidden states into SAM3's detector: K query states -> decoder queries + reference boxes;
    instruction token states -> prompt features."""

    def __init__(self, vlm_dim: int, sam3_dim: int, num_queries: int):
        super().__init__()
        self.query_mlp = MLP(vlm_dim, sam3_dim, sam3_dim)
        self.query_norm = nn.LayerNorm(sam3_dim)
        self.box_mlp = MLP(vlm_dim, sam3_dim, 4)
        self.reference_logits = nn.Parameter(grid_reference_logits(num_queries))
        self.prompt_mlp = MLP(vlm_dim, sam3_dim, sam3_dim)
        self.prompt_norm = nn.LayerNorm(sam3_dim)

    def reset_parameters(self, std: float, init) -> None:
        """Called from InstructSAMModel._init_weights with transformers' flag-aware init functions (loaded
        weights are never overwritten)."""
        for mlp in (self.query_mlp, self.box_mlp, self.prompt_mlp):
            for lin in (mlp.fc1, mlp.fc2):
                init.normal_(lin.weight, mean=0.0, std=std)
                init.zeros_(lin.bias)
        init.zeros_(self.box_mlp.fc2.weight)  # start exactly at the grid reference boxes
        init.copy_(self.reference_logits, grid_reference_logits(self.reference_logits.shape[0]))
        for norm in (self.query_norm, self.prompt_norm):
            init.ones_(norm.weight)
            init.zeros_(norm.bias)

    def queries(self, query_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, d_vlm) -> (B, K, d_sam3) decoder queries and (B, K, 4) reference boxes (cxcywh in (0, 1))."""
        queries = self.query_norm(self.query_mlp(query_states))
        boxes = (self.reference_logits.to(query_states.dtype) + self.box_mlp(query_states)).sigmoid()
        return queries, boxes

    def prompt(self, instruction_states: torch.Tensor) -> torch.Tensor:
        """(B, L, d_vlm) -> (B, L, d_sam3) prompt features standing in for SAM3's CLIP text features."""
        return self.prompt_norm(self.prompt_mlp(instruction_states))


class ReferenceProjector(nn.Module):
    """The published InstructSAM's projectors: query states -> decoder queries, and the input embeddings of a
    generated phrase ([ref_start, phrase, ref_end]) -> prompt features, each Linear(d, d) -> ReLU -> Linear(d, 256),
    no LayerNorm; every query's reference box is sigmoid(reference_logits), the same for every phrase."""

    def __init__(self, vlm_dim: int, sam3_dim: int, num_queries: int):
        super().__init__()
        self.query_mlp = MLP(vlm_dim, vlm_dim, sam3_dim, activation=F.relu)
        self.prompt_mlp = MLP(vlm_dim, vlm_dim, sam3_dim, activation=F.relu)
        self.reference_logits = nn.Parameter(torch.zeros(num_queries, 4))

    def reset_parameters(self, std: float, init) -> None:
        for mlp in (self.query_mlp, self.prompt_mlp):
            for lin in (mlp.fc1, mlp.fc2):
                init.normal_(lin.weight, mean=0.0, std=std)
                init.zeros_(lin.bias)
        init.normal_(self.reference_logits, mean=0.0, std=std)

    def queries(self, query_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.reference_logits.to(query_states.dtype).sigmoid()
        return self.query_mlp(query_states), boxes.expand(*query_states.shape[:-1], 4)

    def prompt(self, phrase_embeds: torch.Tensor) -> torch.Tensor:
        return self.prompt_mlp(phrase_embeds)


__all__ = ["DetectorOutput", "detect_with_queries", "encode_prompted", "decode_queries", "PromptedImages",
           "select_vision", "QueryProjector", "ReferenceProjector", "grid_reference_logits"]

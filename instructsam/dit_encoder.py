"""Deep instruction tuning (DIT, Huang et al.) on SAM3's ViT: the instruction's word features take part in the
image encoder's own attention, so the encoder itself fuses text and image (SAM3's own text path meets the image
only after the encoder, in its DETR encoder and decoder).

    end_to_end (E-DIT)  F_t W_0 + b_0 is appended after the patch embedding (and the ViT's pre-norm) and goes
                        through every layer with the patch tokens. With the encoder frozen, a linear adapter
                        after each layer (identity at the start) adapts the text tokens to the next layer.
                        The detector's prompt is the last layer's text tokens, F_t^L W_o.
    layer_wise (L-DIT)  layer i gets its own F_t W_i + b_i, attended by that layer's patch tokens and dropped
                        after it, so the words meet each layer's tokens in that layer's own space. The
                        detector's prompt is F_t W_o (identity at the start).
    none                no insertion: SAM3's default text prompting, the baseline.

SAM3's ViT mixes windowed and global attention layers. The text tokens are appended to *every window* as extra
keys and values: each window's patches read the instruction in every layer, the window partition is untouched and
the cost grows by L keys per window, not with the image. The text tokens' own queries (E-DIT) attend over all
patches of all windows plus the text, like the global tokens of sparse-attention transformers, so a word's update
sees the whole image rather than one window. Text tokens carry no position: a patch's score for a word leaves out
the patch's rotary position too (`patch_attention_inputs`), so words have no place on the patch grid. Every layer
runs SAM3's own weights (norms, projections, MLP); without text tokens the encoder computes exactly SAM3's ViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam3.modeling_sam3 import (
    Sam3ViTLayer,
    Sam3ViTModel,
    apply_rotary_pos_emb_2d,
    window_partition,
    window_unpartition,
)

from instructsam.config import DIT_VARIANTS

def _heads(linear: nn.Linear, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, C) -> (B, heads, S, C / heads)."""
    return linear(x).unflatten(-1, (num_heads, -1)).transpose(1, 2)


def patch_attention_inputs(layer: Sam3ViTLayer, windows: torch.Tensor, text_normed: torch.Tensor, num_windows: int):
    """Queries, keys and values for the patches of (B * nw, h, w, C) normed windows attending over their window and
    the (B, L, C) normed text. Along the head dimension the queries are [rotated, plain], the patch keys
    [rotated, 0] and the text keys [0, plain] (values as usual): patch-patch scores are SAM3's rotary ones, and
    patch-text scores carry no position, so the text sits nowhere on the grid. The scale stays 1/sqrt(head_dim).
    Also returns the plain patch keys and values and the text's own (B, heads, L, d) keys and values, which the
    text's queries read."""
    attn = layer.attention
    nh = attn.num_attention_heads
    flat = windows.flatten(1, 2)
    q, k, v = (_heads(proj, flat, nh) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    cos, sin = layer.rotary_emb(windows, layer.position_ids)
    q_rot, k_rot = apply_rotary_pos_emb_2d(q, k, cos=cos, sin=sin)
    text_k, text_v = _heads(attn.k_proj, text_normed, nh), _heads(attn.v_proj, text_normed, nh)
    tk, tv = text_k.repeat_interleave(num_windows, 0), text_v.repeat_interleave(num_windows, 0)
    queries = torch.cat([q_rot, q], -1)
    keys = torch.cat([torch.cat([k_rot, torch.zeros_like(k_rot)], -1), torch.cat([torch.zeros_like(tk), tk], -1)], 2)
    return queries, keys, torch.cat([v, tv], 2), (k, v), (text_k, text_v)


def layer_with_text(layer: Sam3ViTLayer, hidden: torch.Tensor, text: torch.Tensor | None,
                    text_mask: torch.Tensor | None, update_text: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One SAM3 ViT layer on (B, H, W, C) patch tokens with (B, L, C) text tokens taking part in its attention.

    text_mask: (B, L) bool, True = a real token (padding is never attended). update_text: also return the text
    tokens' own update (attention over every patch and the text, then the MLP); otherwise None.
    """
    if text is None or text.shape[1] == 0:
        return layer(hidden), text
    attn = layer.attention
    nh = attn.num_attention_heads
    dropout = attn.attention_dropout if layer.training else 0.0
    batch, height, width, _ = hidden.shape
    residual = hidden
    normed = layer.layer_norm1(hidden)
    if layer.window_size > 0:
        windows, pad_hw = window_partition(normed, layer.window_size)
    else:
        windows = normed
    per_window = windows.shape[1] * windows.shape[2]
    num_windows = windows.shape[0] // batch
    text_normed = layer.layer_norm1(text)
    keep = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None else text_mask.bool()
    text_bias = torch.zeros(keep.shape, dtype=normed.dtype, device=normed.device).masked_fill(~keep, float("-inf"))

    # patches: their window's keys plus the text's
    queries, keys, values, (k, v), (text_k, text_v) = patch_attention_inputs(layer, windows, text_normed, num_windows)
    bias = F.pad(text_bias, (per_window, 0)).repeat_interleave(num_windows, 0)[:, None, None]
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=bias, dropout_p=dropout, scale=attn.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(windows.shape))
    if layer.window_size > 0:
        out = window_unpartition(out, layer.window_size, pad_hw, (height, width))
    hidden = residual + out
    hidden = hidden + layer.dropout(layer.mlp(layer.layer_norm2(hidden)))
    if not update_text:
        return hidden, None

    # text: every real patch of every window (plain keys: no position) plus the text
    def all_windows(x):  # (B * nw, ..., S, d) -> (B, ..., nw * S, d)
        return x.unflatten(0, (batch, num_windows)).transpose(1, -3).flatten(-3, -2)

    patch_bias = torch.zeros(batch, num_windows * per_window, dtype=normed.dtype, device=normed.device)
    if layer.window_size > 0:  # the zero padding window_partition adds is no patch
        real, _ = window_partition(torch.ones(batch, height, width, 1, device=normed.device), layer.window_size)
        patch_bias = patch_bias.masked_fill(all_windows(real.flatten(1, 2)[:, None])[:, 0, :, 0] == 0, float("-inf"))
    tq = _heads(attn.q_proj, text_normed, nh)
    text_out = F.scaled_dot_product_attention(
        tq, torch.cat([all_windows(k), text_k], 2), torch.cat([all_windows(v), text_v], 2),
        attn_mask=torch.cat([patch_bias, text_bias], 1)[:, None, None], dropout_p=dropout, scale=attn.scaling)
    text = text + attn.o_proj(text_out.transpose(1, 2).flatten(2))
    text = text + layer.dropout(layer.mlp(layer.layer_norm2(text)))
    return hidden, text


class DITEncoder(nn.Module):
    """The DIT parameters around SAM3's ViT (which stays SAM3's module, with SAM3's weights).

    text_dim: the width of the instruction's word features F_t (SAM3's prompt width: its text encoder's projected
    features, or the VLM's instruction states after the prompt projector). vit_dim / num_layers: SAM3's ViT.
    """

    def __init__(self, variant: str, text_dim: int, vit_dim: int, num_layers: int, frozen_encoder: bool):
        super().__init__()
        if variant not in DIT_VARIANTS:
            raise ValueError(f"dit_variant must be one of {DIT_VARIANTS}, got {variant!r}")
        self.variant = variant
        if variant == "end_to_end":
            self.input_proj = nn.Linear(text_dim, vit_dim)
            self.layer_adapters = nn.ModuleList(nn.Linear(vit_dim, vit_dim) for _ in range(num_layers)) \
                if frozen_encoder else None
            self.output_proj = nn.Linear(vit_dim, text_dim)
        elif variant == "layer_wise":
            self.layer_projs = nn.ModuleList(nn.Linear(text_dim, vit_dim) for _ in range(num_layers))
            self.output_proj = nn.Linear(text_dim, text_dim)

    def reset_parameters(self, std: float, init) -> None:
        """Projections into the ViT at std (as SAM3's own linears); adapters and L-DIT's output projection start
        as the identity (a fresh L-DIT's *prompt* is SAM3's default one; its inserted tokens already change the image
        features, whatever their scale, since each layer's norm rescales them)."""
        for lin in self.modules():
            if isinstance(lin, nn.Linear):
                init.normal_(lin.weight, mean=0.0, std=std)
                init.zeros_(lin.bias)
        identities = list(getattr(self, "layer_adapters", None) or [])
        if self.variant == "layer_wise":
            identities.append(self.output_proj)
        for lin in identities:
            init.copy_(lin.weight, torch.eye(lin.weight.shape[0], dtype=lin.weight.dtype))

    def forward(self, vit: Sam3ViTModel, pixel_values: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None, layers_out: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM3's ViT on (B, 3, S, S) pixels with the (B, L, text_dim) word features inserted. Returns the ViT's
        last_hidden_state (B, h*w, C), as `Sam3ViTModel.forward`, and the detector's (B, L, text_dim) prompt.
        layers_out: a list that receives every layer's (B, h, w, C) patch tokens."""
        hidden = vit.embeddings(pixel_values)
        batch = hidden.shape[0]
        height = pixel_values.shape[-2] // vit.config.patch_size
        width = pixel_values.shape[-1] // vit.config.patch_size
        hidden = vit.layer_norm(hidden.view(batch, height, width, -1))
        text = text.to(next(self.parameters()).dtype) if self.variant != "none" else text
        tokens = self.input_proj(text) if self.variant == "end_to_end" else None
        for i, layer in enumerate(vit.layers):
            if self.variant == "end_to_end":
                hidden, tokens = layer_with_text(layer, hidden, tokens, text_mask, update_text=True)
                if self.layer_adapters is not None:
                    tokens = self.layer_adapters[i](tokens)
            elif self.variant == "layer_wise":
                hidden, _ = layer_with_text(layer, hidden, self.layer_projs[i](text), text_mask, update_text=False)
            else:
                hidden = layer(hidden)
            if layers_out is not None:
                layers_out.append(hidden)
        hidden = hidden.view(batch, height * width, -1)
        if self.variant == "end_to_end":
            prompt = self.output_proj(tokens)
        elif self.variant == "layer_wise":
            prompt = self.output_proj(text)
        else:
            prompt = text
        return hidden, prompt


__all__ = ["DITEncoder", "layer_with_text"]

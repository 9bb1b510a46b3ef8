"""The hybrid attention mask: image and instruction tokens stay causal; each query token sees the whole prefix and
every other query (also later ones). `causal` mode (the ablation) keeps queries causal too.

Qwen3-VL takes a prepared 4D mask as-is. It must be a float additive mask (0 = attend, dtype-min = blocked): a
boolean 4D mask is silently misread by the eager attention path.
"""
from __future__ import annotations

import torch

# token kinds, one per position
PAD = 0  # padding: attends only to itself (a fully blocked row would give NaNs), nobody attends to it
CAUSAL = 1  # image / template / instruction tokens
QUERY = 2  # instance-query tokens


def allowed_pairs(kinds_q: torch.Tensor, kinds_kv: torch.Tensor, mode: str) -> torch.Tensor:
    """Boolean (B, Lq, Lkv) attention pattern; the Lq query positions are the last Lq of the Lkv key positions."""
    if mode not in ("hybrid", "causal"):
        raise ValueError(f"attention mode must be 'hybrid' or 'causal', got {mode!r}")
    lq, lkv = kinds_q.shape[1], kinds_kv.shape[1]
    offset = lkv - lq
    i = torch.arange(lq, device=kinds_q.device).view(1, lq, 1) + offset
    j = torch.arange(lkv, device=kinds_q.device).view(1, 1, lkv)
    key_valid = (kinds_kv != PAD).unsqueeze(1)
    allowed = (j <= i) & key_valid
    if mode == "hybrid":
        allowed = allowed | ((kinds_q == QUERY).unsqueeze(2) & (kinds_kv == QUERY).unsqueeze(1))
    pad_rows = (kinds_q == PAD).unsqueeze(2)
    allowed = torch.where(pad_rows, j == i, allowed)
    return allowed


def additive_mask(kinds_q: torch.Tensor, kinds_kv: torch.Tensor, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """Float (B, 1, Lq, Lkv) additive mask for Qwen3-VL's language model (see module docstring)."""
    allowed = allowed_pairs(kinds_q, kinds_kv, mode)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


__all__ = ["PAD", "CAUSAL", "QUERY", "allowed_pairs", "additive_mask"]

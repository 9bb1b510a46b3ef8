"""LoRA on the VLM's language model, built with peft at model construction so `from_pretrained` finds the LoRA
weights in the same places it saved them (`...q_proj.lora_A.default.weight`, base weights under `base_layer`)."""
from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn


def add_lora(module: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
    """Inject LoRA adapters in place. peft initialises lora_B to zero, so the wrapped model's outputs are
    unchanged until training; the new weights are flagged as initialised so transformers' post_init keeps them."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none")
    inject_adapter_in_model(config, module)
    for name, sub in module.named_modules():
        if "lora_" in name:
            sub._is_hf_initialized = True
            for p in sub.parameters(recurse=False):
                p._is_hf_initialized = True


def is_lora_parameter(name: str) -> bool:
    return "lora_A." in name or "lora_B." in name


__all__ = ["add_lora", "is_lora_parameter"]

"""Building the model a training run trains (and rebuilding it from a step checkpoint), and the process group:
what the trainer and the evaluation commands share, so evaluation never imports the trainer (nor it them).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from instructsam.modeling import InstructSAMModel, require_parameter_prefixes
from instructsam_tools.training.step_checkpoints import load_trainable
from instructsam_tools.training.train_config import TrainConfig, load_config, resolve_path
from instructsam_tools.training.tracker_objective import positional_memory_attention_

# InstructSAMConfig fields that change the architecture or the tokenizer: a loaded model cannot switch them
ARCHITECTURE_FIELDS = {"num_queries", "lora_r", "lora_alpha", "lora_target_modules", "image_size", "vlm_image_size",
                       "query_token_ids", "vlm_config", "sam3_config", "inference_mode", "dit_variant",
                       "dit_text_source", "dit_freeze_encoder"}


# ---------------------------------------------------------------------------------------------------------------
# distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# model, optimizer, schedule


def reinit_modules_(model: nn.Module, names: list[str]) -> None:
    """Re-initialise the named modules in place: Linear weights Xavier-uniform with zero biases, norms reset."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"model.reinit_modules: no module {unknown} in this model (e.g. projector.prompt_mlp)")
    for name in names:
        reset = False
        for sub in modules[name].modules():
            if isinstance(sub, nn.Linear):
                nn.init.xavier_uniform_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
                reset = True
            elif isinstance(sub, (nn.LayerNorm, nn.GroupNorm)):
                sub.reset_parameters()
                reset = True
        if not reset:
            raise ValueError(f"model.reinit_modules: {name} has no Linear or LayerNorm / GroupNorm layer to "
                             f"re-initialise")


def build_model(cfg: TrainConfig, info: DistInfo) -> InstructSAMModel:
    """Load config.model.checkpoint, or build the fresh tiny model once (rank 0) into OUTPUT/init and load it.

    Every rank loads the same directory, so a resumed run starts from exactly the same frozen weights."""
    m = cfg.model
    if m.checkpoint:
        directory = resolve_path(m.checkpoint)
    else:
        directory = Path(cfg.output_dir) / "init"
        if info.is_main:
            build_fresh_tiny(directory, m.tiny_config, m.build_overrides, m.he_init)
        barrier()
    model = InstructSAMModel.from_pretrained(str(directory))
    bad = sorted(set(m.overrides) & ARCHITECTURE_FIELDS)
    if bad:
        raise ValueError(f"model.overrides cannot change {bad} of a loaded model; for a fresh tiny build use "
                         f"model.build_overrides")
    for key, value in m.overrides.items():
        if not hasattr(model.config, key):
            raise ValueError(f"model.overrides: InstructSAMConfig has no field {key!r}")
        setattr(model.config, key, value)
    model.config.check_settings()
    model.config.validate_architecture()
    if m.tracker_attention_init == "positional":  # (validated with the config) a resumed run loads its weights over it
        positional_memory_attention_(model.tracker)
    reinit_modules_(model, m.reinit_modules)
    model.apply_freezing()
    require_parameter_prefixes(model, m.freeze_modules, "model.freeze_modules")
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in m.freeze_modules):
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no trainable parameters: check model.overrides / model.freeze_modules")
    frozen = [n for n in m.reinit_modules if not all(p.requires_grad for p in model.get_submodule(n).parameters())]
    if frozen:  # a step checkpoint keeps trainable weights only: a frozen re-initialised one could not be restored
        raise ValueError(f"model.reinit_modules {frozen} are (partly) frozen; re-initialised modules must train")
    return model.to(info.device)


def load_step_model(directory: str | Path, device: torch.device | str = "cpu") -> InstructSAMModel:
    """The model of a step checkpoint (OUTPUT/checkpoints/step_N): rebuilt as its run built it (base checkpoint
    or OUTPUT/init, model.overrides) with the checkpoint's trainable weights, for evaluating mid-training."""
    directory = Path(directory)
    config_file = directory / "train_config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not a training step checkpoint (no train_config.yaml)")
    cfg = load_config(values=yaml.safe_load(config_file.read_text()))
    if not cfg.model.checkpoint and not (Path(cfg.output_dir) / "init" / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: its run's fresh model {Path(cfg.output_dir) / 'init'} is missing")
    model = build_model(cfg, DistInfo(device=torch.device(device)))
    load_trainable(model, directory)
    return model.eval()


def build_fresh_tiny(directory: Path, tiny_config: str, build_overrides: dict, he_init: list | None = None) -> None:
    """instructsam_tools.tiny.build_tiny with `build_overrides` merged into the yaml's `instructsam:` section (and
    `he_init` added to its list). An existing directory built from the same spec is reused; one built from another
    spec is an error."""
    from instructsam_tools.tiny import build_tiny, load_spec

    spec = load_spec(resolve_path(tiny_config))
    spec.setdefault("instructsam", {}).update(build_overrides or {})
    if he_init:
        spec["he_init"] = list(spec.get("he_init") or []) + list(he_init)
    text = yaml.safe_dump(spec, sort_keys=True)
    spec_file = directory / "tiny_spec.yaml"
    if (directory / "config.json").is_file() and spec_file.is_file():
        if spec_file.read_text() != text:
            raise ValueError(f"{directory} was built from a different tiny spec than this run's "
                             f"(model.tiny_config / model.build_overrides); use another output_dir")
        return
    directory.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(text)
    build_tiny(directory, spec_file)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["ARCHITECTURE_FIELDS", "DistInfo", "setup_distributed", "barrier", "seed_everything", "build_model",
           "load_step_model", "build_fresh_tiny", "cleanup_distributed"]

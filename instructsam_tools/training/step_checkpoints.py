"""Training checkpoints with exact resume.

    OUTPUT/checkpoints/step_0000500/
        trainable.safetensors   the trainable parameters, under the model's own state-dict names (the names
                                save_pretrained writes), so they can be loaded into a from_pretrained model
        training_state.safetensors  optimizer, LR scheduler, grad scaler, data position, run config, world size
        train_config.yaml       the run config (to rebuild the model: instructsam_tools.training.model_build.load_step_model)
        rng_rank{r}.safetensors python / numpy / torch (+ CUDA) RNG states of each rank

None of these files is a pickle (state_file.py: tensors in safetensors, the rest as JSON), so resuming from a
directory someone handed over cannot run code. Older checkpoints with `training_state.pt` are refused, not read.

A resumed run rebuilds the model exactly as the original did (same base checkpoint or fresh-build directory),
loads these files and continues from the saved data position: its weights then equal an uninterrupted run's.
Directories are written under a temporary name and renamed, so a crash never leaves a half-written checkpoint
that `latest_checkpoint` would pick.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from instructsam.errors import CheckpointError, CheckpointNotFoundError
from instructsam_tools.training.state_file import load_state, save_state

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "training_state.safetensors"
PICKLED_STATE_FILE = "training_state.pt"  # the pickle format of earlier versions: never loaded


def rng_file_name(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist():
        dist.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler, position: dict,
                    config: dict, rank: int = 0, world_size: int = 1) -> Path:
    """Write a checkpoint directory (collective under DDP: every rank must call it)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(trainable_state_dict(model), str(tmp / "trainable.safetensors"))
        (tmp / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        save_state(tmp / STATE_FILE, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "position": dict(position),
            "config": config, "world_size": world_size})
    _barrier()
    save_state(tmp / rng_file_name(rank), rng_state())
    _barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    _barrier()
    return final


def load_trainable(model: torch.nn.Module, directory: str | Path) -> None:
    """Load trainable.safetensors into the model; every trainable parameter must be in it."""
    file = Path(directory) / "trainable.safetensors"
    if not file.is_file():
        raise CheckpointNotFoundError(f"training checkpoint {str(directory)!r} has no trainable.safetensors")
    state = load_file(str(file))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise CheckpointError(f"{file}: {len(unknown)} tensor(s) the model does not have, e.g. {unknown[:3]} "
                              f"(was it saved from a different model configuration?)")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    if missing:
        raise CheckpointError(f"{file}: no values for {len(missing)} trainable parameter(s), e.g. {missing[:3]} "
                              f"(was the checkpoint saved with different freezing settings?)")
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise CheckpointError(f"{file}: {name} has shape {tuple(value.shape)}, the model expects "
                                      f"{tuple(params[name].shape)}")
            params[name].copy_(value)


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer, scheduler, scaler,
                    rank: int = 0, world_size: int = 1) -> dict:
    """Restore everything save_checkpoint wrote; returns the data position."""
    directory = Path(directory)
    state_file = directory / STATE_FILE
    if not state_file.is_file():
        if (directory / PICKLED_STATE_FILE).is_file():
            raise CheckpointError(
                f"{directory} holds {PICKLED_STATE_FILE}, the pickle format of earlier versions; it is not loaded "
                f"because unpickling can run code. Resume from a checkpoint written by this version "
                f"({STATE_FILE}), or restart from the run's exported model")
        raise CheckpointNotFoundError(f"{str(directory)!r} is not a training checkpoint (no {STATE_FILE})")
    state = load_state(state_file)
    try:
        if state["world_size"] != world_size:
            raise CheckpointError(f"{directory} was written by {state['world_size']} rank(s); resuming with "
                                  f"{world_size} would change the data order (exact resume needs the same world "
                                  f"size)")
        load_trainable(model, directory)
        optimizer.load_state_dict(state["optimizer"])  # moves the state to the parameters' device
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        rng_file = directory / rng_file_name(rank)
        if not rng_file.is_file():
            raise CheckpointNotFoundError(f"{directory} has no RNG state for rank {rank} ({rng_file.name})")
        set_rng_state(load_state(rng_file))
        return dict(state["position"])
    except (KeyError, TypeError, ValueError, IndexError) as err:  # well-formed files with the wrong content
        raise CheckpointError(f"{directory}: training state does not fit this run: {type(err).__name__}: "
                              f"{err}") from err


def is_step_checkpoint(path: str | Path) -> bool:
    """A training step checkpoint (of this or an earlier version) rather than a model directory."""
    return any((Path(path) / name).is_file() for name in (STATE_FILE, PICKLED_STATE_FILE))


def step_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step checkpoints under output_dir/checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = step_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (keep = 0 keeps everything)."""
    if keep <= 0:
        return
    for path in step_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["STATE_FILE", "save_checkpoint", "is_step_checkpoint", "load_checkpoint", "load_trainable",
           "trainable_state_dict", "latest_checkpoint", "step_checkpoints", "prune_checkpoints", "rng_state",
           "set_rng_state"]

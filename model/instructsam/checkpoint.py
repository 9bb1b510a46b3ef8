"""Checks on checkpoint directories before loading, so a bad path or file fails with a message that names it
(rather than deep inside transformers or safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from .errors import CheckpointError, CheckpointNotFoundError


def read_config_json(directory: str | Path, what: str = "checkpoint") -> dict:
    """The parsed config.json of a local checkpoint directory (errors name the path)."""
    path = Path(directory)
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{what} path {str(path)!r} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointNotFoundError(f"{what} directory {str(path)!r} has no config.json")
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what} config {str(config_file)!r} is not valid JSON: {err}") from err


def safetensors_files(directory: str | Path, what: str = "checkpoint") -> list[Path]:
    """The weight files of a checkpoint (single file or sharded with an index), each checked to open."""
    path = Path(directory)
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{what} index {str(index)!r} is not a valid safetensors index: {err}") from err
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        raise CheckpointNotFoundError(
            f"{what} directory {str(path)!r} has no model.safetensors (or model.safetensors.index.json)")
    for file in files:
        check_safetensors(file, what)
    return files


def check_safetensors(file: Path, what: str = "checkpoint") -> None:
    """Open the file's header and check every tensor's data lies inside the file (catches truncation and
    corrupt headers without reading the weights)."""
    if not file.is_file():
        raise CheckpointNotFoundError(f"{what} weight file {str(file)!r} does not exist")
    try:
        with safe_open(str(file), framework="pt") as f:
            if not list(f.keys()):
                raise CheckpointError(f"{what} weight file {str(file)!r} contains no tensors")
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(f"{what} weight file {str(file)!r} is corrupt or not a safetensors file: {err}") from err


def check_instructsam_dir(directory: str | Path) -> dict:
    """Everything `InstructSAMModel.from_pretrained` needs: config, weights and tokenizer."""
    config = read_config_json(directory, "InstructSAM checkpoint")
    model_type = config.get("model_type")
    if model_type != "instructsam":
        raise CheckpointError(
            f"{str(directory)!r} holds a {model_type!r} checkpoint, not an InstructSAM one; compose it from a VLM and "
            f"a SAM3 directory with `python -m instructsam.compose --vlm DIR --sam3 DIR --out DIR`")
    safetensors_files(directory, "InstructSAM checkpoint")
    path = Path(directory)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CheckpointNotFoundError(f"InstructSAM checkpoint {str(path)!r} has no tokenizer files")
    return config


__all__ = ["read_config_json", "safetensors_files", "check_safetensors", "check_instructsam_dir"]

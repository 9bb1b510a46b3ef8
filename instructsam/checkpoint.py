"""Checks on checkpoint directories before loading, so a bad path or file fails with a message that names it
(rather than deep inside transformers or safetensors)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import safe_open

from instructsam.errors import CheckpointError, CheckpointNotFoundError


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


WEIGHTS_HASH_KEY = "weights_sha256"  # config.json: {weight file name: sha256 hex digest}, written at save time
HASH_CHUNK = 1 << 24


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_weight_files(files: list[Path]) -> dict[str, str]:
    return {f.name: file_sha256(f) for f in files}


def record_weight_hashes(directory: str | Path) -> dict[str, str]:
    """Write the sha256 of every weight file into the directory's config.json (after save_pretrained)."""
    path = Path(directory)
    hashes = hash_weight_files(safetensors_files(path))
    config = read_config_json(path)
    config[WEIGHTS_HASH_KEY] = hashes
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return hashes


def verify_weight_hashes(directory: str | Path, files: list[Path], config: dict, what: str = "checkpoint") -> None:
    """Check the weight `files` (safetensors_files, already opened) against the hashes recorded when they were
    saved (a checkpoint saved without hashes is not checked). Catches corruption past the header, which opening
    the file does not notice."""
    recorded = config.get(WEIGHTS_HASH_KEY)
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{what} config in {str(directory)!r}: {WEIGHTS_HASH_KEY} must map file names to "
                              f"sha256 digests")
    for file in files:
        expected = recorded.get(file.name)
        if expected is None:
            raise CheckpointError(f"{what} weight file {str(file)!r} has no recorded hash in config.json "
                                  f"({WEIGHTS_HASH_KEY} lists {sorted(recorded)})")
        if file_sha256(file) != expected:
            raise CheckpointError(f"{what} weight file {str(file)!r} is corrupt: its sha256 differs from the one "
                                  f"recorded in config.json when it was saved")


def weights_fingerprint(directory: str | Path) -> dict[str, str]:
    """What identifies a checkpoint's weights: the recorded hashes, or the files' own when none are recorded."""
    config = read_config_json(directory)
    recorded = config.get(WEIGHTS_HASH_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    return hash_weight_files(safetensors_files(directory))


def check_instructsam_dir(directory: str | Path, verify_hashes: bool = False) -> dict:
    """Everything `InstructSAMModel.from_pretrained` needs: config, weights and tokenizer; with verify_hashes,
    also the weight files' content against the hashes recorded at save time (reads every byte)."""
    config = read_config_json(directory, "InstructSAM checkpoint")
    model_type = config.get("model_type")
    if model_type != "instructsam":
        raise CheckpointError(
            f"{str(directory)!r} holds a {model_type!r} checkpoint, not an InstructSAM one; compose it from a VLM and "
            f"a SAM3 directory with `python -m instructsam_tools.compose --vlm DIR --sam3 DIR --out DIR`")
    files = safetensors_files(directory, "InstructSAM checkpoint")
    if verify_hashes:
        verify_weight_hashes(directory, files, config, "InstructSAM checkpoint")
    path = Path(directory)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CheckpointNotFoundError(f"InstructSAM checkpoint {str(path)!r} has no tokenizer files")
    return config


__all__ = ["read_config_json", "safetensors_files", "check_safetensors", "check_instructsam_dir",
           "record_weight_hashes", "verify_weight_hashes", "weights_fingerprint", "WEIGHTS_HASH_KEY"]

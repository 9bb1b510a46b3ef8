"""The bag evaluator's input files (records JSON, ground-truth JSON, instruction-schedule YAML), read with errors
that name the file: a missing file is FileNotFoundError, an unparsable one the caller's error class."""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml


def read_document(path: str | os.PathLike, what: str, error: type[Exception] = ValueError, fmt: str = "json"):
    """The parsed content of `path` (fmt "json" or "yaml"); `what` names the file in errors ("ground-truth file")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) if fmt == "yaml" else json.loads(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{path}: not valid {fmt.upper()}: {err}") from err

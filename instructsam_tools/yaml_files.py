"""YAML config files that may name a `base:` file to start from (training configs, model yamls), and where a
relative config path is found."""
from __future__ import annotations

from pathlib import Path

import yaml

from instructsam import resources


def resolve_path(path: str | Path) -> Path:
    """Relative paths are taken from the current directory, falling back to the package's share directories
    (the shipped config/ files); a path found nowhere is returned as given, for the caller's error."""
    found = [c for c in resources.candidates(path) if c.exists()]
    return found[0] if found else Path(path)


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def read_yaml_tree(path: str | Path, _seen: tuple = ()) -> dict:
    """A config file's tree (training or model yaml); `base: other.yaml` (relative to the file) is loaded first and
    deep-merged under it, so a variant only states what it changes."""
    file = resolve_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    if file.resolve() in _seen:
        raise ValueError(f"config {file} includes itself through 'base'")
    tree = yaml.safe_load(file.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"config {file} must be a YAML mapping")
    base = tree.pop("base", None)
    if base:
        tree = deep_merge(read_yaml_tree(file.parent / base, (*_seen, file.resolve())), tree)
    return tree

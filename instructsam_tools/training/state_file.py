"""Training state (optimizer, scheduler, scaler, RNG, data position) in files that cannot run code when read.

A resumed run reads files a user hands it, so nothing here unpickles: one safetensors file holds every tensor, and
its metadata holds the rest of the nested structure as JSON, with tensors and the few non-JSON values written as
tagged objects:

    {"$tensor": "t3"}               the tensor stored under key "t3"
    {"$ndarray": {dtype, shape, data}}  a small numpy array (numpy's RNG state)
    {"$tuple": [...]}               a tuple (python's RNG state, Adam's betas)
    {"$items": [[key, value], ...]} a dict whose keys are not all strings (optimizer state is keyed by int)

Reading accepts exactly these tags and JSON's own types; anything else is a CheckpointError naming the file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from instructsam.errors import CheckpointError

STRUCTURE_KEY = "structure"  # the metadata entry holding the JSON structure
NUMPY_DTYPES = ("uint32", "int64", "float64", "uint8")  # what numpy RNG states hold


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in NUMPY_DTYPES:
            raise TypeError(f"numpy arrays of dtype {value.dtype} are not written into training state")
        return {"$ndarray": {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot write a {type(value).__name__} into training state")


def save_state(path: str | Path, state: Any) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, numpy arrays and JSON scalars) to one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(state, tensors))  # NaN/inf (e.g. a scaler's) are JSON's NaN/Infinity literals
    save_file(tensors, str(path), metadata={STRUCTURE_KEY: structure})


class _Decoder:
    def __init__(self, file: Path, tensors: dict[str, torch.Tensor]):
        self.file, self.tensors, self.used = file, tensors, set()

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: {what} (not a training-state file this package wrote)")

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if isinstance(value, dict):
            if len(value) == 1:
                (tag, body), = value.items()
                if tag == "$tensor":
                    if not isinstance(body, str) or body not in self.tensors or body in self.used:
                        raise self.fail(f"tensor reference {body!r} is missing or used twice")
                    self.used.add(body)
                    return self.tensors[body]
                if tag == "$ndarray":
                    return self._ndarray(body)
                if tag == "$tuple":
                    if not isinstance(body, list):
                        raise self.fail("a $tuple that is not a list")
                    return tuple(self.decode(v) for v in body)
                if tag == "$items":
                    if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                        raise self.fail("an $items entry that is not a list of [key, value] pairs")
                    return {self._key(k): self.decode(v) for k, v in body}
            if any(k.startswith("$") for k in value):
                raise self.fail(f"unknown tag(s) {sorted(k for k in value if k.startswith('$'))}")
            return {k: self.decode(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise self.fail(f"unexpected JSON value {value!r}")

    def _key(self, key: Any) -> Any:
        key = self.decode(key)
        if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
            raise self.fail(f"a dict key of type {type(key).__name__}")
        return key

    def _ndarray(self, body: Any) -> np.ndarray:
        if not isinstance(body, dict) or set(body) != {"dtype", "shape", "data"} or body["dtype"] not in NUMPY_DTYPES:
            raise self.fail(f"a malformed $ndarray (dtype must be one of {NUMPY_DTYPES})")
        shape, data = body["shape"], body["data"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(data, list) and len(data) == math.prod(shape)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)):
            raise self.fail("a $ndarray whose shape and data do not agree")
        return np.asarray(data, dtype=body["dtype"]).reshape(shape)


def load_state(path: str | Path) -> Any:
    """Read a file save_state wrote. Raises CheckpointError naming the file for anything else."""
    file = Path(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from err
    if STRUCTURE_KEY not in metadata:
        raise CheckpointError(f"{file}: no {STRUCTURE_KEY!r} entry in its metadata (not a training-state file)")
    try:
        structure = json.loads(metadata[STRUCTURE_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: its {STRUCTURE_KEY!r} metadata is not JSON ({err})") from err
    decoder = _Decoder(file, tensors)
    state = decoder.decode(structure)
    if decoder.used != set(tensors):
        raise CheckpointError(f"{file}: tensors {sorted(set(tensors) - decoder.used)[:3]} are referenced nowhere")
    return state


__all__ = ["save_state", "load_state"]

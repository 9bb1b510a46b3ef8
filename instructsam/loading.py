"""Loading a model the way every user of the library does (node, bag evaluator, evaluation, benchmarks): one
checkpoint resolver and one `load_model` with the device, dtype and thread settings the node exposes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from instructsam.errors import CheckpointNotFoundError
from instructsam.checkpoint import check_instructsam_dir
from instructsam.official_checkpoint import check_official_dir, is_official_layout, load_official
from instructsam.resources import share_dirs

DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_checkpoint(path: str | os.PathLike, search: Iterable[str | os.PathLike] = ()) -> Path:
    """An absolute path as it is; a relative one in the working directory, then in each `search` directory, then
    in the package's share directories (resources.share_dirs: the colcon install, or the source tree). Raises
    CheckpointNotFoundError naming every place looked at."""
    text = str(path)
    if not text.strip():
        raise CheckpointNotFoundError("the checkpoint path is empty: give an InstructSAM checkpoint directory")
    given = Path(os.path.expanduser(text))
    if given.is_absolute():
        candidates = [given]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / given, *(Path(d) / given for d in search),
                                         *(d / given for d in share_dirs())]))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CheckpointNotFoundError(
        f"checkpoint directory {text!r} does not exist (looked in: {', '.join(str(c) for c in candidates)})")


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:<n>'; ValueError naming the problem."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a torch device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {name!r}, but CUDA is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    """'auto': bfloat16 on cuda, float32 elsewhere."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return name


def check_checkpoint(path: str | os.PathLike, sam3: str | os.PathLike | None = None) -> None:
    """What load_model will need of a resolved checkpoint directory (either layout), checked without loading:
    CheckpointError naming the file otherwise."""
    if is_official_layout(path):
        check_official_dir(path, sam3)
    else:
        check_instructsam_dir(path)


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32", threads: int = 0,
               search: Iterable[str | os.PathLike] = (), sam3: str | os.PathLike | None = None):
    """The InstructSAM model of a checkpoint directory, in eval mode on `device` ('auto': cuda when available)
    with `dtype` ('auto': bfloat16 on cuda); `threads` > 0 sets torch's CPU threads. Errors name the problem:
    CheckpointError for the directory and its files, ValueError for the device or dtype.

    A directory in the published InstructSAM-2B layout is recognised and loaded in reference mode, with SAM3's
    remaining parts from `sam3` (a facebook/sam3 directory; default: the one its config names)."""
    from transformers.utils import logging as transformers_logging

    from instructsam.modeling import InstructSAMModel

    directory = resolve_checkpoint(path, search)
    torch_device = resolve_device(device)
    dtype_name = resolve_dtype(dtype, torch_device)
    if threads > 0:
        torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in a node's log or a worker's
    if is_official_layout(directory):
        model = load_official(directory, sam3, getattr(torch, dtype_name))
    else:
        model = InstructSAMModel.from_pretrained(directory, dtype=getattr(torch, dtype_name))
    return model.to(torch_device).eval()


__all__ = ["check_checkpoint", "resolve_checkpoint", "resolve_device", "resolve_dtype", "load_model", "DTYPES"]

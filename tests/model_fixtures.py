"""Shared helpers for the model tests: the tiny checkpoint is built once per test session (through the same
compose + from_pretrained path as real checkpoints) and each test loads its own model from it."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)


@functools.lru_cache(maxsize=1)
def tiny_dir() -> Path:
    """Directory of the tiny InstructSAM checkpoint (sources under sources/vlm and sources/sam3)."""
    from instructsam_tools.tiny import build_tiny

    root = Path(tempfile.mkdtemp(prefix="instructsam_tiny_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_tiny(root / "tiny")


def load_tiny(**config_overrides):
    """A fresh tiny model in eval mode (tests may change it freely)."""
    from instructsam.modeling import InstructSAMModel

    model = InstructSAMModel.from_pretrained(tiny_dir())
    for key, value in config_overrides.items():
        setattr(model.config, key, value)
    return model.eval()


def random_images(n: int, sizes=((90, 120), (128, 96), (112, 112)), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


INSTRUCTIONS = ["the red circle", "every blue square left of the green star",
                "all shapes except the small yellow triangle"]


@functools.lru_cache(maxsize=2)
def official_tiny_dir(phrases: int = 2) -> Path:
    """A tiny checkpoint in the published InstructSAM-2B layout (official/) with its facebook/sam3-style sam3/
    beside it; greedy decoding writes one phrase and stops (phrases=1) or repeats it (phrases=2)."""
    from instructsam_tools.official_tiny import build_official_tiny

    root = Path(tempfile.mkdtemp(prefix=f"instructsam_official_{phrases}_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_official_tiny(root, phrases=phrases)[0]


def load_official_tiny(phrases: int = 2, **config_overrides):
    from instructsam.official_checkpoint import load_official

    model = load_official(official_tiny_dir(phrases))
    for key, value in config_overrides.items():
        setattr(model.config, key, value)
    return model.eval()

"""Bad input raises a clear error that names the problem (input problems are ValueErrors)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from model_fixtures import load_tiny, random_images, tiny_dir

from instructsam_tools.compose import compose
from instructsam.config import InstructSAMConfig
from instructsam.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ImageInputError,
    InstructionError,
    InstructSAMInputError,
)
from instructsam.modeling import InstructSAMModel


@pytest.fixture(scope="module")
def model():
    return load_tiny()


@pytest.fixture(scope="module")
def features(model):
    return model.encode_image(random_images(1)[0])


@pytest.mark.parametrize("instruction, message", [
    ("", "instruction 0 is empty"),
    ("   \n\t", "instruction 0 is empty"),
    ("x" * 100_000, "100000 characters, more than the limit of 2000"),
    (" ".join(["red"] * 400), "tokens, more than the limit of 128"),
    (None, "must be a str, got NoneType"),
    (42, "must be a str, got int"),
])
def test_bad_instructions(model, features, instruction, message):
    with pytest.raises(InstructionError, match=message) as err:
        model.segment(features, [instruction])
    assert isinstance(err.value, ValueError)


def test_bad_instruction_lists(model, features):
    with pytest.raises(InstructionError, match="single str"):
        model.segment(features, "the red circle")
    with pytest.raises(InstructionError, match="empty list of instructions"):
        model.segment(features, [])
    with pytest.raises(InstructionError, match="instruction 1 is empty"):
        model.segment(features, ["fine", ""])
    with pytest.raises(InstructSAMInputError, match="out of range for 1 images"):
        model.segment(features, ["the mug"], image_index=[3])
    with pytest.raises(InstructSAMInputError, match="image_index has 2 entries for 1 instructions"):
        model.segment(features, ["the mug"], image_index=[0, 0])


@pytest.mark.parametrize("image, message", [
    (np.zeros((64, 64), np.uint8), r"expected shape \(H, W, 3\) RGB, got \(64, 64\)"),
    (np.zeros((64, 64, 4), np.uint8), r"got \(64, 64, 4\)"),
    (np.zeros((3, 64, 64), np.uint8), "channels-first"),
    (np.zeros((64, 64, 3), np.float32), "dtype float32"),
    (torch.zeros((64, 64, 3), dtype=torch.float16), "dtype torch.float16"),
    (np.zeros((1, 64, 3), np.uint8), "too small"),
    ([], "empty list of images"),
    (np.zeros((0, 64, 64, 3), np.uint8), "empty batch"),
    ("image.png", "got str"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int64)], "image 1: expected a uint8"),
])
def test_bad_images(model, image, message):
    with pytest.raises(ImageInputError, match=message) as err:
        model.encode_image(image)
    assert isinstance(err.value, ValueError)


def test_features_encoded_without_the_vlm_are_refused_by_segment(model):
    image = random_images(1)[0]
    partial = model.encode_image(image, vlm=False)
    assert partial.vlm_image_embeds is None
    torch.testing.assert_close(partial.sam3.last_hidden_state, model.encode_image(image).sam3.last_hidden_state)
    with pytest.raises(ValueError, match="encoded without the VLM part"):
        model.segment(partial, ["the red circle"])


def test_missing_checkpoint_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointNotFoundError, match="nowhere.*does not exist") as err:
        InstructSAMModel.from_pretrained(missing)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="VLM directory .*nowhere"):
        compose(missing, tiny_dir() / "sources" / "sam3", tmp_path / "out")


def _copy_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir(), target, ignore=shutil.ignore_patterns("sources"))
    return target


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "header"])
def test_corrupt_safetensors(tmp_path, corruption):
    ckpt = _copy_checkpoint(tmp_path)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    if corruption == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif corruption == "garbage":
        weights.write_bytes(b"definitely not safetensors" * 100)
    else:
        weights.write_bytes(data[:8] + b"{" * 64 + data[72:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.* is corrupt or not a safetensors file"):
        InstructSAMModel.from_pretrained(ckpt)


def test_incomplete_or_wrong_kind_of_checkpoint(tmp_path):
    ckpt = _copy_checkpoint(tmp_path)
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="has no tokenizer files"):
        InstructSAMModel.from_pretrained(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="has no model.safetensors"):
        InstructSAMModel.from_pretrained(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.* is not valid JSON"):
        InstructSAMModel.from_pretrained(ckpt)
    with pytest.raises(CheckpointError, match="'qwen3_vl' checkpoint, not an InstructSAM one.*compose"):
        InstructSAMModel.from_pretrained(tiny_dir() / "sources" / "vlm")
    src = tiny_dir() / "sources"
    with pytest.raises(CheckpointError, match="needs the full SAM3 checkpoint"):
        compose(src / "vlm", src / "vlm", tmp_path / "out")
    with pytest.raises(CheckpointError, match="composes a Qwen3-VL model"):
        compose(src / "sam3", src / "sam3", tmp_path / "out")


def test_bad_config_values():
    base = load_tiny().config.to_dict()
    for key, value, message in [("attention_mode", "bidirectional", "attention_mode must be one of"),
                                ("mask_threshold", 1.5, "probabilities in"),
                                ("num_queries", 0, "num_queries must be >= 1"),
                                ("vlm_image_size", 100, "multiple of")]:
        with pytest.raises(ValueError, match=message):
            InstructSAMConfig(**{**base, key: value, "query_token_ids": None})

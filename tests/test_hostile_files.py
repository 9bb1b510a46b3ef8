"""The hostile-file catalogue: files a user hands the package's CLIs (training checkpoints to resume, model
checkpoints, rosbag2 recordings, ground truth) made to break it or to run code. Each case runs the real command
and asserts the error names the problem; the code-execution cases also assert that their payload never ran.

The node's side of the catalogue (images, instructions, parameters, lifecycle) is tests/test_hostile_node.py.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import REPO, build_test_model


class _Payload:
    """Unpickling this runs `touch MARKER`: proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_payload(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1"))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("model") / "tiny")


def _resume(model_dir: Path, checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    return _run("-m", "instructsam.training.train", "--config", str(REPO / "config" / "train_test.yaml"),
                "--resume", str(checkpoint), f"model.checkpoint={model_dir}", f"output_dir={out}",
                "train.max_steps=2")


def _real_step_checkpoint(model_dir: Path, out: Path) -> Path:
    """A genuine 1-step checkpoint of the small test model (what an attacker would start from)."""
    done = _run("-m", "instructsam.training.train", "--config", str(REPO / "config" / "train_test.yaml"),
                f"model.checkpoint={model_dir}", f"output_dir={out}", "train.max_steps=1",
                "train.checkpoint_every=1")
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "checkpoints" / "step_0000001"


@pytest.fixture(scope="module")
def step_checkpoint(small_model, tmp_path_factory) -> Path:
    return _real_step_checkpoint(small_model, tmp_path_factory.mktemp("run"))


# Each case turns a genuine step checkpoint into a hostile one: (file to replace, how, expected error text).
RESUME_ATTACKS = {
    # the pickle format of earlier versions, with a payload: refused by name, never read
    "pickled training_state.pt": ("training_state.pt", "pickle", r"training_state\.pt.*unpickling can run code"),
    # a pickle under the new names: not safetensors, so refused by the parser
    "pickle as training_state.safetensors": ("training_state.safetensors", "pickle",
                                             r"training_state\.safetensors: not a readable safetensors file"),
    "pickle as rng_rank0.safetensors": ("rng_rank0.safetensors", "pickle",
                                        r"rng_rank0\.safetensors: not a readable safetensors file"),
    # well-formed safetensors whose JSON structure asks for something that is not plain data
    "unknown tag in the state structure": ("training_state.safetensors", "tag",
                                           r"training_state\.safetensors: unknown tag\(s\) \['\$reduce'\]"),
    "truncated training_state.safetensors": ("training_state.safetensors", "truncate",
                                             r"training_state\.safetensors: not a readable safetensors file"),
}


def _make_hostile(directory: Path, name: str, how: str, marker: Path) -> None:
    target = directory / name
    if name == "training_state.pt":  # the old layout: only the pickle, no new-format state
        (directory / "training_state.safetensors").unlink(missing_ok=True)
    if how == "pickle":
        _pickle_payload(target, marker)
    elif how == "tag":
        from safetensors.torch import save_file
        structure = '{"$reduce": ["os.system", "touch %s"]}' % marker
        save_file({}, str(target), metadata={"structure": structure})
    elif how == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", list(RESUME_ATTACKS))
def test_resume_from_a_hostile_checkpoint_runs_no_code(case, small_model, step_checkpoint, tmp_path):
    """train --resume on a crafted checkpoint directory: a clear error naming the file, and the payload never
    runs (with torch.load(weights_only=False) the pickled training_state.pt touched the marker)."""
    import shutil

    name, how, expected = RESUME_ATTACKS[case]
    hostile = tmp_path / "checkpoints" / "step_0000001"
    shutil.copytree(step_checkpoint, hostile)
    marker = tmp_path / "code_ran"
    _make_hostile(hostile, name, how, marker)
    done = _resume(small_model, hostile, tmp_path / "out")
    assert not marker.exists(), f"{case}: the checkpoint's payload ran"
    assert done.returncode == 2, f"{case}: exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    import re
    assert re.search(expected, done.stderr), f"{case}: {done.stderr[-2000:]}"


def test_genuine_step_checkpoint_resumes(small_model, step_checkpoint, tmp_path):
    """The safe format still resumes (the exact-resume test in test_training checks the values)."""
    done = _resume(small_model, step_checkpoint, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()

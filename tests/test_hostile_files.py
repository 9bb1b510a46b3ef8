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
    return _run("-m", "instructsam_tools.training.train", "--config", str(REPO / "config" / "train_test.yaml"),
                "--resume", str(checkpoint), f"model.checkpoint={model_dir}", f"output_dir={out}",
                "train.max_steps=2")


def _real_step_checkpoint(model_dir: Path, out: Path) -> Path:
    """A genuine 1-step checkpoint of the small test model (what an attacker would start from)."""
    done = _run("-m", "instructsam_tools.training.train", "--config", str(REPO / "config" / "train_test.yaml"),
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


# ---- model checkpoints ------------------------------------------------------------------------------------
def _copy_checkpoint(tmp_path: Path) -> Path:
    import shutil

    from model_fixtures import tiny_dir
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir(), copy)
    return copy


def _corrupt_tail(file: Path, nbytes: int) -> None:
    """Replace the last `nbytes` of a safetensors file with random bytes; its header stays intact."""
    import numpy as np
    data = bytearray(file.read_bytes())
    nbytes = min(nbytes, len(data) // 2)
    data[-nbytes:] = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    file.write_bytes(bytes(data))


def test_weights_corrupted_past_the_header_are_refused_naming_the_file(tmp_path):
    """The last 4 MB of the weights replaced by random bytes (the header intact: opening the file notices
    nothing): the hash recorded at save time catches it (before: the model loaded silently)."""
    from instructsam.errors import CheckpointError
    from instructsam.modeling import InstructSAMModel

    ckpt = _copy_checkpoint(tmp_path)
    _corrupt_tail(ckpt / "model.safetensors", 4 << 20)
    with pytest.raises(CheckpointError, match=r"model\.safetensors' is corrupt: its sha256 differs"):
        InstructSAMModel.from_pretrained(ckpt)


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path):
    from instructsam.errors import CheckpointNotFoundError
    from instructsam.modeling import InstructSAMModel

    ckpt = _copy_checkpoint(tmp_path)
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "code_ran"
    _pickle_payload(ckpt / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointNotFoundError, match="has no model.safetensors"):
        InstructSAMModel.from_pretrained(ckpt)
    assert not marker.exists()


def test_a_config_that_is_not_json_is_named(tmp_path):
    from instructsam.errors import CheckpointError
    from instructsam.modeling import InstructSAMModel

    ckpt = _copy_checkpoint(tmp_path)
    (ckpt / "config.json").write_text('{"model_type": "instructsam", ')
    with pytest.raises(CheckpointError, match=r"config .*config\.json' is not valid JSON"):
        InstructSAMModel.from_pretrained(ckpt)


# ---- bags for bag_eval ----------------------------------------------------------------------------------
def _bag_eval(capsys, *args) -> tuple[int, str, str]:
    from instructsam_tools.bag_eval.cli import main
    code = main(["run", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def made(tmp_path):
    from bag_helpers import synthetic
    return synthetic(tmp_path / "bags", frames=4, size=32)[0]


def _string_only_bag(path: Path) -> Path:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(path, version=8) as writer:
        conn = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        writer.write(conn, 1, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hi"),
                                                  "std_msgs/msg/String"))
    return path


def test_a_bag_without_image_topics_is_refused_before_the_model_loads(tmp_path, capsys):
    """The error names the bag, says it has no image topics and lists its topics, before any model loads (the
    checkpoint given is corrupt: had it been loaded first, the error would be about it)."""
    ckpt = _copy_checkpoint(tmp_path)
    _corrupt_tail(ckpt / "model.safetensors", 1 << 20)
    bag = _string_only_bag(tmp_path / "chatter_only")
    code, _, err = _bag_eval(capsys, bag, "--checkpoint", ckpt, "--out", tmp_path / "r", "--instruction", "x")
    assert code == 2, err
    assert f"{bag}: the bag has no image topics" in err and "its topics: /chatter (std_msgs/msg/String)" in err
    assert "corrupt" not in err


def _truncate_storage(bag: Path) -> Path:
    [db] = [p for p in bag.iterdir() if p.suffix in (".db3", ".mcap")]
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    return db


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_truncated_bag_stops_the_run_naming_it(tmp_path, capsys, storage):
    from bag_helpers import synthetic
    from model_fixtures import tiny_dir
    made = synthetic(tmp_path / "bags", frames=4, size=32, storage=storage)[0]
    _truncate_storage(made.bag)
    code, _, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", tmp_path / "r")
    assert code == 2 and str(made.bag) in err, err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_metadata_that_names_a_missing_file_is_named(tmp_path, capsys, made):
    import yaml
    from model_fixtures import tiny_dir
    meta_file = made.bag / "metadata.yaml"
    meta = yaml.safe_load(meta_file.read_text())
    meta["rosbag2_bagfile_information"]["relative_file_paths"] = ["elsewhere.db3"]
    meta_file.write_text(yaml.safe_dump(meta))
    code, _, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", tmp_path / "r")
    assert code == 2 and f"cannot open bag {made.bag}" in err, err


def test_ground_truth_of_the_wrong_size_is_named(tmp_path, capsys, made):
    import json
    from model_fixtures import tiny_dir
    gt = json.loads(made.ground_truth.read_text())
    text = json.dumps(gt).replace('"height": 32', '"height": 33')
    assert text != json.dumps(gt)
    made.ground_truth.write_text(text)
    code, _, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", tmp_path / "r")
    assert code == 2 and f"{made.ground_truth}" in err, err
    assert "RLE size [32, 32] does not match the image size [33, 32]" in err, err


def test_records_from_other_settings_are_refused_and_overwrite_recomputes(tmp_path, capsys, made):
    from model_fixtures import tiny_dir
    out = tmp_path / "r"
    code, _, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", out)
    assert code == 0, err
    code, _, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", out, "--set",
                             "keyframe_interval=2")
    assert code == 2 and "was evaluated into this --out with other settings (differing: settings)" in err, err
    assert "--overwrite" in err
    code, printed, err = _bag_eval(capsys, made.bag, "--checkpoint", tiny_dir(), "--out", out, "--set",
                                   "keyframe_interval=2", "--overwrite")
    assert code == 0 and "reused" not in printed, err


# ---- a killed bag_eval worker pool --------------------------------------------------------------------
def test_a_killed_parallel_run_leaves_no_orphans_and_its_rerun_resumes(tmp_path):
    """kill -9 of `bag_eval run --workers 2` mid-run: its workers die with it (before: they lived on and wrote
    more output bags), no half-written record or output bag is left at a final name, and the re-run into the
    same --out with --write-bags reuses the finished bags (a count in its summary) and completes the rest."""
    import signal
    import time

    import psutil
    from bag_helpers import synthetic
    from instructsam_ros.bags.records import BagRecords
    from model_fixtures import tiny_dir

    synthetic(tmp_path / "bags", videos=6, frames=30, size=48)
    bags = sorted(str(p) for p in (tmp_path / "bags").glob("synthetic_?"))
    out = tmp_path / "r"
    args = ["-m", "instructsam_tools.bag_eval", "run", *bags, "--checkpoint", str(tiny_dir()), "--out", str(out),
            "--workers", "2", "--write-bags", "--no-progress", "--set", "keyframe_interval=3"]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / "records"
    deadline = time.monotonic() + 240
    while not (records.is_dir() and any(records.glob("*.records.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no bag finished in time"
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2, "the run should have its worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
    finished = {p.name.removesuffix(".records.json") for p in records.glob("*.records.json")}
    assert 1 <= len(finished) < 6, finished
    for name in finished:  # a records file at its final name is complete
        BagRecords.load(records / f"{name}.records.json")
    complete_bags = {p.name.removesuffix("_instances") for p in (out / "bags").glob("*_instances")}
    assert finished <= complete_bags  # each finished bag's output bag was published before its records

    rerun = _run(*args[:-2], "--set", "keyframe_interval=3")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished)} of 6 bag(s) reused" in rerun.stdout, rerun.stdout
    assert f", {len(finished)} reused)" in rerun.stdout.splitlines()[-1]
    assert len(list(records.glob("*.records.json"))) == 6
    assert len(list((out / "bags").glob("*_instances"))) == 6 and not (out / "bags" / ".partial").exists()

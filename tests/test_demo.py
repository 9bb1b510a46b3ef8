"""The README's demo (`python -m instructsam_tools.demo`, what scripts/demo.sh runs) end to end: node, synthetic camera
and scripted planner as separate processes over real ROS 2 topics, an overlay GIF, a summary naming every
instruction, and no process left behind (after a normal run and after Ctrl-C). Plus the pure parts: the video and
script (scene.py) and the summary arithmetic."""
from __future__ import annotations

import json
import os
import py_compile
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model_fixtures import tiny_dir

REPO = Path(__file__).resolve().parents[1]
FRAMES, FPS, SIZE = 24, 8.0, 96


def demo_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "instructsam_tools.demo", "--frames", str(FRAMES), "--fps", str(FPS),
            "--size", str(SIZE), "--checkpoint", str(tiny_dir()), "--out", str(out), *extra]


def child_pids(output: str) -> dict[str, int]:
    found = dict(re.findall(r"(node|planner|camera) \(pid (\d+)\)", output))
    assert set(found) == {"node", "planner", "camera"}, f"the demo did not print its children's pids:\n{output}"
    return {name: int(pid) for name, pid in found.items()}


def alive(pid: int) -> bool:
    """Running (or a zombie nobody reaped) with that pid: /proc/<pid> exists."""
    return Path(f"/proc/{pid}").exists()


def processes_with(text: str) -> list[int]:
    """Pids of processes whose command line contains `text` (e.g. the test's checkpoint path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def assert_all_gone(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"processes left behind: {left}"
    assert not processes_with(str(tiny_dir())), "a process still runs with the test checkpoint"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    start = time.monotonic()
    proc = subprocess.run(demo_cmd(out), cwd=REPO, capture_output=True, text=True, timeout=150)
    return proc, out, time.monotonic() - start


def test_demo_runs_end_to_end(demo_run):
    from PIL import Image

    from instructsam_tools.demo import scene

    proc, out, seconds = demo_run
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the demo failed ({proc.returncode}):\n{output}"
    summary = json.loads((out / "summary.json").read_text())

    # the GIF: every overlay frame the node published, decodable
    gif = out / "overlay.gif"
    assert f"GIF: {gif} ({summary['gif']['frames']} frames)" in proc.stdout
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.size == (SIZE, SIZE)
        assert image.n_frames == summary["gif"]["frames"] == summary["overlay_frames"] > 0
        for k in range(image.n_frames):
            image.seek(k)
            assert np.asarray(image.convert("RGB")).shape == (SIZE, SIZE, 3)
    assert summary["results"] == summary["overlay_frames"]  # one overlay per result (publish_overlay)

    # the summary names every scripted instruction, in order, and each produced results
    script = scene.script_for(0, -1, FRAMES, SIZE)
    assert [s.kind for s in script] == ["category", "switch", "no_target", "back"]
    assert [(i["id"], i["text"]) for i in summary["instructions"]] == [(s.id, s.text) for s in script]
    for step, ins in zip(script, summary["instructions"]):
        assert f"{step.id} [{step.kind}] {step.text!r}" in proc.stdout
        assert ins["results"] > 0, f"no results for {step.text!r}:\n{output}"
        assert ins["latency_ms"]["p50"] > 0
    # the no-target instruction got answers (whatever a random model says: it cannot be asserted empty)
    no_target = summary["instructions"][2]
    assert no_target["kind"] == "no_target" and no_target["results"] > 0
    assert sum(i["results"] for i in summary["instructions"]) == summary["results"]
    # the demo scores itself against the camera's ground truth: every result frame is matched to a camera frame
    # (a frame the recorder itself missed could not be), J&F for the steps with targets, empty frames for no target
    for step, ins in zip(script, summary["instructions"]):
        score = ins["self_score"]
        assert score["targets"] == list(step.targets) and (step.kind == "no_target") == (not step.targets)
        assert score["frames_scored"] + score["frames_unmatched"] == ins["results"] and score["frames_scored"] > 0
        if step.targets:
            assert 0.0 <= score["J&F"] <= 1.0
            assert f"self-score: J&F {score['J&F']:.2f}" in proc.stdout
        else:
            assert score["empty_frames"] <= ins["empty_results"]
            assert f"self-score: {score['empty_frames']} of {score['frames_scored']} result frames empty" in proc.stdout
    assert re.search(r"latency \(node: image receipt -> result\) p50/p95 \d+ / \d+ ms", proc.stdout)
    assert re.search(r"dropped \d+", proc.stdout)
    assert int(summary["node"]["processed"]) >= summary["results"]
    assert summary["exit_codes"] == {"camera": 0, "planner": 0, "node": 0}
    assert seconds < 60, f"the demo took {seconds:.0f} s"


def test_demo_leaves_no_process_behind(demo_run):
    proc, _, _ = demo_run
    assert_all_gone(child_pids(proc.stdout))


def test_ctrl_c_stops_every_process(tmp_path):
    """SIGINT (Ctrl-C) while the node loads its model: the demo stops its children in order and exits 130."""
    proc = subprocess.Popen(demo_cmd(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "started node" in line:
                break
        pids = child_pids("".join(lines))
        time.sleep(2.0)  # the children are up and busy starting
        assert all(alive(pid) for pid in pids.values())
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted: stopping" in output and "processes stopped" in output
    assert_all_gone(pids)


def test_missing_checkpoint_fails_clearly(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    proc = subprocess.run([sys.executable, "-m", "instructsam_tools.demo", "--checkpoint", str(missing),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and str(missing) in proc.stderr and "--checkpoint" in proc.stderr
    assert "pid" not in proc.stdout  # nothing was started


# ---- the pure parts ---------------------------------------------------------------------------------------------
def test_scene_cast_matches_the_rendered_video_and_script_fits_it():
    from instructsam_tools.demo import scene

    index = scene.pick_video(0, SIZE)
    video = scene.demo_video(0, index, 30, SIZE)
    assert video.frames.shape == (30, SIZE, SIZE, 3)
    assert scene.cast(0, index, SIZE) == video.objects  # planner and camera agree without rendering twice
    steps = scene.default_script(video.objects, 30)
    assert [s.at_frame for s in steps] == sorted({s.at_frame for s in steps}) and steps[0].at_frame == 0
    pairs = {(o["color"], o["shape"]) for o in video.objects.values()}
    no_target = next(s for s in steps if s.kind == "no_target")
    assert not any(f"{c} {s}" in no_target.text for c, s in pairs)  # nothing in the video matches it
    first = steps[0].text
    assert any(first == f"all the {scene._plural(o['shape'])}" for o in video.objects.values())


def test_self_score_matches_results_to_camera_frames_by_their_pixels_and_scores_them():
    """Results made from the video's own ground truth score J&F 1; a mask shifted by a few pixels scores less, with
    J and F apart; a result whose frame the recorder never saw, or saw with other pixels, is not scored; the
    no-target step counts its empty frames."""
    from instructsam.rle import encode_rle
    from instructsam_tools.demo import scene
    from instructsam_tools.demo.recorder import Result
    from instructsam_tools.demo.self_score import format_self_score, frame_digest, score_instructions

    index = scene.pick_video(0, SIZE)
    video = scene.demo_video(0, index, 12, SIZE)
    steps = [s.as_dict() for s in scene.default_script(video.objects, 12)]
    category, no_target = steps[0], steps[2]
    digests = {(t, 0): frame_digest(f) for t, f in enumerate(video.frames)}
    digests[(11, 0)] = frame_digest(video.frames[0] ^ 1)  # the recorder saw other pixels under that stamp

    def result(step, t, shift=0, stamp=None):
        masks = {str(o): (encode_rle(np.roll(video.masks[o][t], shift, axis=1)), SIZE, SIZE)
                 for o in step["targets"] if video.masks[o][t].any()}
        return Result(step["id"], step["text"], t, True, float(t), float(t), 1.0, 1.0,
                      [(k, 1, 0.9) for k in masks], frame_key=(t if stamp is None else stamp, 0), masks=masks)

    perfect = score_instructions([result(category, t) for t in range(11)], digests, video, steps)[category["id"]]
    assert perfect["targets"] == category["targets"] and perfect["targets"]
    assert (perfect["frames_scored"], perfect["frames_unmatched"], perfect["J&F"]) == (11, 0, 1.0)
    shifted = [result(category, t, shift=3) for t in range(10)] + [result(category, 11), result(category, 5, stamp=99)]
    score = score_instructions(shifted, digests, video, steps)[category["id"]]
    assert (score["frames_scored"], score["frames_unmatched"]) == (10, 2)
    assert 0.2 < score["J"] < 0.95 and score["F"] != pytest.approx(score["J"], abs=0.01)
    assert "2 result frame(s) not matched to a camera frame" in format_self_score(score)

    empty = [Result(no_target["id"], no_target["text"], t, True, 0.0, 0.0, 1.0, 1.0, [], frame_key=(t, 0))
             for t in range(4)]
    empty[0] = result(category | {"id": no_target["id"]}, 0)  # one frame answered with instances
    score = score_instructions(empty, digests, video, steps)[no_target["id"]]
    assert (score["targets"], score["empty_frames"], score["frames_scored"]) == ([], 3, 4)
    assert format_self_score(score).startswith("self-score: 3 of 4 result frames empty (75 %")


def test_summary_counts_tracks_and_latency():
    from instructsam_tools.demo.recorder import Result, format_summary, summarize
    from instructsam_ros.msg import InstanceMask

    new, tracked, lost = InstanceMask.STATE_NEW, InstanceMask.STATE_TRACKED, InstanceMask.STATE_LOST
    results = [
        Result("a", "all the circles", 0, True, 10.0, 10.1, 50.0, 40.0, [("1", new, 0.9), ("2", new, 0.8)]),
        Result("a", "all the circles", 1, False, 10.5, 10.6, 70.0, 60.0, [("1", tracked, 0.9), ("2", lost, 0.0)]),
        Result("a", "all the circles", 2, False, 11.0, 11.1, 90.0, 80.0, [("1", tracked, 0.9)]),
        Result("c", "the red stars", 3, True, 11.5, 11.6, 30.0, 20.0, []),
    ]
    script = [{"id": "a", "text": "all the circles", "kind": "category"},
              {"id": "b", "text": "the blue star", "kind": "switch"},
              {"id": "c", "text": "the red stars", "kind": "no_target"}]
    s = summarize(results, script, {"received": "5", "processed": "4", "dropped": "1"}, camera_frames=5)
    a, b, c = s["instructions"]
    assert (a["results"], a["keyframes"], a["instances_per_frame"]) == (3, 1, {"mean": 1.33, "min": 1, "max": 2})
    assert a["tracks"] == [{"id": "1", "frames": 3, "seconds": 1.0}, {"id": "2", "frames": 1, "seconds": 0.0}]
    assert a["latency_ms"] == {"p50": 70.0, "p95": 88.0}
    assert b["results"] == 0 and c["results"] == 1 and c["empty_results"] == 1 and c["tracks"] == []
    text = format_summary(s)
    assert "b [switch] 'the blue star'\n     no results" in text and "dropped 1" in text
    assert "1 (3 fr, 1.0 s)" in text


def test_demo_launch_file_compiles_and_names_installed_executables(tmp_path):
    source = (REPO / "launch" / "demo.launch.py").read_text()
    py_compile.compile(str(REPO / "launch" / "demo.launch.py"), cfile=str(tmp_path / "demo.pyc"), doraise=True)
    assert "instructsam.launch.py" in source and (REPO / "launch" / "instructsam.launch.py").is_file()
    for name in re.findall(r'executable="([a-z_]+)"', source):
        script = REPO / "scripts" / name
        assert script.is_file() and os.access(script, os.X_OK), f"no executable scripts/{name}"
        module = name.removeprefix("demo_")
        assert f"from instructsam_tools.demo.{module} import main" in script.read_text()

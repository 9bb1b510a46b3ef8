"""The benchmark suite (python -m instructsam_tools.benchmarks): a smoke run of the command at tiny settings, and the FLOP
counter it relies on. No timing assertions: timings depend on the machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from model_fixtures import load_tiny, tiny_dir

from instructsam_tools.benchmarks.levers import LEVERS

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"paths", "batching", "node", "scaling", "stream", "dit", "alternatives", "cameras", "levers"}


def test_smoke_run_reports_every_section_and_a_verdict_per_target(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "instructsam_tools.benchmarks", "--config", "tiny", "--repeats", "1",
           "--stream-frames", "50", "--no-full-size", "--out", str(out), "--models", str(tiny_dir().parent),
           "--markdown", str(tmp_path / "BENCHMARKS.md")]
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "benchmarks.json").read_text())
    assert set(results["sections"]) == SECTIONS
    assert set(results["sections"]["paths"]) == {"tiny"}
    assert set(results["sections"]["batching"]["tiny"]) == {"1", "4", "16"}
    assert set(results["sections"]["node"]["instances"]) == {"1", "10", "50"}
    scaling = results["sections"]["scaling"]["tiny"]
    assert set(scaling["k"]) == {"4", "16", "64"} and set(scaling["objects"]) == {"1", "2", "4", "8", "16"}
    assert all(v["tracked_objects"] == int(n) for n, v in scaling["objects"].items())
    assert results["sections"]["stream"]["frames"] == 50
    dit = results["sections"]["dit"]["tiny"]  # DIT's per-instruction encoder cost beside InstructSAM's
    assert set(dit) == {"instructsam", "e_dit", "l_dit"}
    assert all(set(v["batched"]) == {"1", "4", "16"} and v["encoder"]["median_ms"] > 0 for v in dit.values())
    alternatives = results["sections"]["alternatives"]["tiny"]  # the default beside (a)-(d), as ratios to it
    assert list(alternatives) == ["default", "naive", "sam3_video", "agent", "reference"]
    assert alternatives["default"]["frame_ratio"] == 1.0 and alternatives["reference"]["phrases"] >= 1
    assert all(v["frame_ms"] > 0 and v["switch_ms"] > 0 for v in alternatives.values())
    cameras = results["sections"]["cameras"]["tiny"]  # 1/2/4 cameras, batched vs one after another
    assert set(cameras) == {"1", "2", "4"} and all(v["batched"]["frames"] > 0 for v in cameras.values())
    levers = results["sections"]["levers"]  # each lever's cost at tiny beside the shipped model's tracking quality
    assert list(levers["cost"]["tiny"]) == list(levers["quality"]) == list(LEVERS)
    assert [v["memory_frames"] for v in levers["quality"].values()] == [4, 7, 2, 4, 4, 4]
    assert [v["tracker_input_size"] for v in levers["cost"]["tiny"].values()] == [112, 112, 112, 70, 56, 112]
    assert all(0 <= q["J&F"] <= 1 and 0 <= q["bag"]["J&F"] <= 1 for q in levers["quality"].values())
    still = {n: v["still_scene_ms"] for n, v in levers["cost"]["tiny"].items() if "still_scene_ms" in v}
    assert set(still) == {"defaults", "skip unchanged 4"}

    targets = results["targets"]
    # paths x2, batching, node x2, stream, alternatives x3, cameras, levers x2 (the defaults' tracking quality):
    # one line each, every one with a verdict
    assert {(t["section"], t["config"]) for t in targets} == {
        ("paths", "tiny"), ("batching", "tiny"), ("node", "any"), ("stream", "tiny"), ("alternatives", "tiny"),
        ("cameras", "tiny"), ("levers", "tiny")}
    assert len(targets) == 12
    table = proc.stdout
    for t in targets:
        assert t["verdict"] in ("PASS", "FAIL")
        line = next((ln for ln in table.splitlines() if t["name"] in ln), None)
        assert line is not None and t["verdict"] in line and t["limit_text"] in line, (t, table)
    for plot in ("scaling_k.png", "scaling_objects.png", "stream_rss.png"):
        assert (out / plot).stat().st_size > 1000
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## 7. DIT beside InstructSAM" in md and "| l_dit |" in md and "## 8. The alternatives" in md
    assert "## 9. Several cameras" in md and "## 10. Levers on a tracked frame" in md
    assert "## Targets" in md and "python -m instructsam_tools.benchmarks" in md and "![stream_rss]" in md
    # the tracked frame is measured as the pipeline runs it (ViT + tracker neck): no projection beside it
    paths = results["sections"]["paths"]["tiny"]
    assert paths["encode_tracker_inputs"]["median_ms"] > 0 and "tracked-frame encode" in md
    assert set(paths["ratios"]) == {"switch_vs_cold", "tracked_vs_keyframe"}
    assert not any("projected" in k for k in paths) and "projected" not in md


def test_shape_only_flop_count_equals_the_real_count():
    from torch.utils.flop_counter import FlopCounterMode

    from instructsam_tools.benchmarks.flops import _attention_flops, count_flops

    model = load_tiny()
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)

    def run():
        features = model.encode_image(image)
        return model.segment(features, ["the red circle", "every blue square"])

    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as reference:
        run()
    real, _ = count_flops(run, shape_only=False)
    shapes_only, out = count_flops(run, shape_only=True)
    assert real.total == shapes_only.total == reference.get_total_flops() > 0
    assert real.top_level() == shapes_only.top_level()
    assert out.mask_logits.shape == (2, model.config.num_queries, 32, 32)
    assert not out.mask_logits.any()  # shape-only: the matmuls' results are zeros, never computed


def test_tracker_flops_are_counted_under_inference_mode():
    """SAM3's tracker runs under torch.inference_mode, where composite ops reach a dispatch mode undecomposed. A
    tracked frame runs SAM3's ViT and the tracker only, and section 6 attributes all of it to its components."""
    from instructsam_tools.benchmarks.common import moving_shapes, run_frames, tracking_pipeline
    from instructsam_tools.benchmarks.flops import count_flops
    from instructsam_tools.benchmarks.full_size import by_component

    model = load_tiny()
    pipeline = tracking_pipeline(model, num_objects=2, keyframe_interval=100)
    frames = moving_shapes(2, 120, 160)
    first = run_frames(pipeline, frames, 1)[0]
    assert first.keyframe and len(first.instances) >= 1, first  # random weights: a slot's mask may be empty
    count, results = count_flops(lambda: run_frames(pipeline, frames, 1, start=1))
    assert not results[0].keyframe and len(results[0].instances) == len(first.instances)
    top = count.top_level()
    assert top.get("Sam3TrackerVideoModel", 0) > 0
    assert "Qwen3VLTextModel" not in top  # a tracked frame does not run the language model
    assert "Qwen3VLVisionModel" not in top  # nor the VLM vision tower
    assert count.get("Sam3VisionModel.neck") == 0 and "Sam3VisionModel" not in top  # nor the detector FPN neck
    components = by_component(count)
    assert components["SAM3 ViT"] > 0 and components["SAM3 tracker"] > 0
    assert "other" not in components and "SAM3 detector FPN neck" not in components, components


def test_memory_tracker_follows_storages_not_rss():
    from instructsam_tools.benchmarks.flops import measure_activations

    def work():
        a = torch.zeros(1000, 1000)  # 4 MB
        b = a + 1  # 4 MB more: peak 8 MB
        del a
        return b[10:]  # a view keeps b alive

    peak, kept, result = measure_activations(work)
    assert peak == 8_000_000 and kept == 4_000_000 and result.shape == (990, 1000)


def test_fast_rle_encoding_is_byte_identical_to_pycocotools():
    """message_codec.encode_rle codes only the mask's columns (benchmark section 3); it must equal pycocotools."""
    from pycocotools import mask as mask_utils

    from instructsam_tools.benchmarks.node_section import instance_masks
    from instructsam_ros.message_codec import encode_rle, rle_box

    def reference(mask):
        rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        return rle["counts"].decode("ascii"), [float(v) for v in mask_utils.toBbox(rle)]

    def encode_mask(mask):
        counts = encode_rle(mask)
        return counts, [float(v) for v in rle_box(counts, *mask.shape)]

    rng = np.random.default_rng(0)
    masks = list(instance_masks(10)[0]) + [np.zeros((48, 64), bool), np.ones((48, 64), bool), np.ones((1, 1), bool)]
    for edge in ((slice(None), 0), (slice(None), -1), (0, 0), (-1, -1)):
        m = np.zeros((48, 64), bool)
        m[edge] = True
        masks.append(m)
    for _ in range(500):
        h, w = rng.integers(1, 30, 2)
        masks.append(rng.random((h, w)) > rng.random())
    for m in masks:
        assert encode_mask(m) == reference(m)


def test_the_gpu_script_runs_its_measurements_on_the_cpu_at_tiny_size(tmp_path):
    """The prepared GPU run (python -m instructsam_tools.benchmarks.gpu) is checked here on the CPU at tiny size, so
    a machine with a GPU only has to run it."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "instructsam_tools.benchmarks.gpu", "--config",
                           "config/model_tiny.yaml", "--device", "cpu", "--dtype", "float32", "--repeats", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    eager = json.loads(out.read_text())["eager"]
    assert eager["tracked_objects"] == 4 and eager["peak_memory_gb"] is None
    assert all(eager[k] > 0 for k in ("keyframe_ms", "tracked_ms", "switch_ms", "4_cameras_sequential_fps",
                                      "4_cameras_batched_fps"))

"""Full-size figures on a GPU: the full-size composition (config/model_full.yaml: Qwen3-VL-2B shape + SAM3's
defaults) with random weights, in bfloat16 on CUDA. Prints keyframe, tracked frame and instruction-switch times,
the throughput of four cameras (one after another and batched, a keyframe every 10 frames) and the peak GPU
memory; with --compile, the same again after torch.compile of SAM3's ViT and the VLM's language model.

    python -m instructsam_tools.benchmarks.gpu [--config config/model_full.yaml] [--device cuda] [--dtype bfloat16]
                                               [--repeats 10] [--compile] [--out gpu.json]

It runs on the CPU as well (slowly at full size): `--config config/model_tiny.yaml --device cpu --dtype float32`
checks it in seconds. Random weights: cost, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from instructsam_tools.benchmarks.cameras import throughput
from instructsam_tools.benchmarks.common import NODE_KEYFRAME_INTERVAL, NUM_OBJECTS
from instructsam_tools.benchmarks.paths import model_paths, pipeline_paths

CAMERAS = 4


def measure(model, repeats: int, device: str) -> dict:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timings, objects = pipeline_paths(model, repeats, NUM_OBJECTS, keyframe_interval=NODE_KEYFRAME_INTERVAL)
    paths = model_paths(model, repeats, NUM_OBJECTS, encoders=False)
    rounds = NODE_KEYFRAME_INTERVAL * max(1, repeats // 5)
    sequential = throughput(model, CAMERAS, False, rounds)
    batched = throughput(model, CAMERAS, True, rounds)
    return {"keyframe_ms": timings["keyframe"].median, "tracked_ms": timings["tracked"].median,
            "tracked_objects": objects, "switch_ms": paths["switch"].median, "cold_ms": paths["cold"].median,
            f"{CAMERAS}_cameras_sequential_fps": sequential["frames_per_s"],
            f"{CAMERAS}_cameras_batched_fps": batched["frames_per_s"],
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m instructsam_tools.benchmarks.gpu",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/model_full.yaml")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also measure after torch.compile (ViT, language model)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device (use --device cpu to check the script)")
    from instructsam_tools.full_size_check import build_random
    from instructsam_tools.tiny import load_spec

    started = time.perf_counter()
    model = build_random(load_spec(args.config), None, None, getattr(torch, args.dtype), device=args.device)
    built = time.perf_counter() - started
    with torch.no_grad():
        result = {"config": args.config, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
                  else platform.processor() or platform.machine(), "dtype": args.dtype, "build_s": built,
                  "torch": torch.__version__, "eager": measure(model, args.repeats, args.device)}
        print(json.dumps(result, indent=1), flush=True)
        if args.compile:
            try:
                model.detector.vision_encoder.backbone.compile()
                model.language_model.compile()
                result["compiled"] = measure(model, args.repeats, args.device)
            except Exception as err:  # report, do not lose the eager figures
                result["compiled"] = {"error": f"{type(err).__name__}: {err}"[:2000]}
    result["seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()

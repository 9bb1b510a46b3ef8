#!/usr/bin/env python
"""Resident memory of the frame pipeline over a long stream: RSS at frame 200 and at the last frame (default 2,000).

    python scripts/pipeline_memory.py [--checkpoint DIR] [--frames 2000] [--cameras 2]

Uses checkpoints/instructsam-tiny when it exists, otherwise builds the random tiny model into a temporary directory.
Synthetic video frames loop; detection is forced (score threshold 0 by default, since a random model scores ~0.25)
and lost tracks are kept (large lost_patience), so the tracker holds objects for the whole run.
Acceptance: RSS grows < 10 % between frame 200 and the last frame.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--keyframe-interval", type=int, default=10)
    ap.add_argument("--score-threshold", type=float, default=0.0)
    ap.add_argument("--nms-iou", type=float, default=0.5,
                    help="1.0 keeps every detected slot as its own track (a random model's masks all overlap)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from instructsam_tools.data.synthetic import SyntheticVideos
    from instructsam.modeling import InstructSAMModel
    from instructsam.pipeline.frame_pipeline import FramePipeline, PipelineSettings

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint
    if checkpoint is None:
        shipped = REPO / "checkpoints" / "instructsam-tiny"
        if (shipped / "config.json").is_file():
            checkpoint = shipped
        else:
            from instructsam_tools.tiny import build_tiny

            checkpoint = build_tiny(Path(tempfile.mkdtemp(prefix="pipeline_memory_")) / "tiny")
            print(f"no shipped checkpoint: using the random tiny model built in {checkpoint}")
    model = InstructSAMModel.from_pretrained(checkpoint).eval()
    cameras = [f"cam{i}" for i in range(args.cameras)]
    videos = SyntheticVideos("val", size=len(cameras), num_frames=60)
    clips = [videos[i] for i in range(len(cameras))]
    settings = PipelineSettings(keyframe_interval=args.keyframe_interval, score_threshold=args.score_threshold,
                                nms_iou=args.nms_iou, lost_patience=1_000_000)
    pipeline = FramePipeline(model, cameras, settings)
    for cam, clip in zip(cameras, clips):
        pipeline.instructions.set(clip.instructions[0]["text"], camera=cam, task=clip.instructions[0]["task"])

    marks: dict[int, float] = {}
    times = {"keyframe": [], "tracked": []}
    start = time.monotonic()
    for t in range(1, args.frames + 1):
        for cam, clip in zip(cameras, clips):
            pipeline.submit(cam, clip.frames[t % clip.num_frames], frame=t)
            r = pipeline.step(cam)
            times["keyframe" if r.keyframe else "tracked"].append(r.processing_ms)
        if t % 200 == 0 or t == args.frames:
            gc.collect()
            marks[t] = rss_mb()
            stats = pipeline.stats(cameras[0])
            print(f"frame {t:5d}  rss {marks[t]:8.1f} MB  tracks {stats['tracks']:2d}  "
                  f"tracker frames {stats['tracker_frames']:2d}  elapsed {time.monotonic() - start:6.1f} s",
                  flush=True)
    for kind, values in times.items():
        if values:
            values = sorted(values)
            print(f"{kind:8s} frames: {len(values):5d}  median {values[len(values) // 2]:6.1f} ms  "
                  f"p95 {values[int(len(values) * 0.95)]:6.1f} ms")
    first = marks.get(200)
    last = marks[args.frames]
    if first is None:
        print("fewer than 200 frames: no growth figure")
        return 0
    growth = (last - first) / first * 100
    print(f"RSS frame 200: {first:.1f} MB, frame {args.frames}: {last:.1f} MB, growth {growth:+.1f} %")
    return 0 if growth < 10 else 1


if __name__ == "__main__":
    sys.exit(main())

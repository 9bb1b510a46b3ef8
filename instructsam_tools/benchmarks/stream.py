"""Section 5: resident memory of the frame pipeline over a long stream.

What it measures: the real FramePipeline with the tiny model (the cheapest model whose code paths are the full
model's) on one camera, processing a looping synthetic video frame by frame: a keyframe every 10 frames (detector,
association, tracker re-conditioning) and SAM3's tracker on the 9 frames between, with 2 tracked objects that are
never dropped, so the tracker session is exercised on every frame. RSS (VmRSS) is sampled ~100 times. The figure is
the largest deviation of RSS from its value at the reference frame (5 % into the stream, after warm-up), in percent.
"""
from __future__ import annotations

import gc
import time

from instructsam_tools.benchmarks.common import Target, moving_shapes, run_frames, tracking_pipeline
from instructsam_tools.benchmarks.flops import rss_bytes

MB = 1024 ** 2


def run_stream(model, frames: int, size: tuple[int, int] = (240, 320), num_objects: int = 2,
               keyframe_interval: int = 10, samples: int = 100) -> tuple[dict, list[Target]]:
    video = moving_shapes(60, *size)
    pipeline = tracking_pipeline(model, num_objects, keyframe_interval)
    every = max(1, frames // samples)
    reference_frame = max(1, frames // 20)
    marks: list[tuple[int, float]] = []
    start = time.perf_counter()
    done = 0
    reference = None
    while done < frames:
        count = min(every, frames - done)
        run_frames(pipeline, video, count, start=done)
        done += count
        if done >= reference_frame and reference is None:
            gc.collect()
            reference = (done, rss_bytes() / MB)
        marks.append((done, rss_bytes() / MB))
    seconds = time.perf_counter() - start
    gc.collect()
    final = rss_bytes() / MB
    ref_frame, ref_mb = reference
    after = [mb for frame, mb in marks if frame >= ref_frame] + [final]
    deviation = max((mb - ref_mb for mb in after), key=abs) / ref_mb * 100
    stats = pipeline.stats("cam")
    result = {
        "frames": frames, "frame_size": list(size), "num_objects": num_objects, "keyframe_interval": keyframe_interval,
        "seconds": seconds, "ms_per_frame": seconds * 1e3 / frames, "reference_frame": ref_frame,
        "reference_mb": ref_mb, "final_mb": final, "max_deviation_pct": deviation,
        "growth_pct": (final - ref_mb) / ref_mb * 100, "rss_mb": [[f, mb] for f, mb in marks],
        "keyframes": stats["keyframes"], "tracks": stats["tracks"], "tracker_frames": stats["tracker_frames"],
        "what": " ".join(__doc__.split("\n\n")[1].split()),
    }
    target = Target("stream", f"resident memory over {frames:,} frames (max deviation from frame {ref_frame})",
                    "tiny", deviation, 5.0, unit="%", absolute=True,
                    note=f"{ref_mb:.0f} MB -> {final:.0f} MB, {result['ms_per_frame']:.1f} ms/frame")
    return result, [target]


__all__ = ["run_stream"]


def main(argv: list[str] | None = None) -> int:
    """Run the stream in its own process (so its RSS is its own): writes the result and targets as JSON."""
    import argparse
    import json
    from pathlib import Path

    from instructsam_tools.benchmarks.common import set_threads

    ap = argparse.ArgumentParser(description="benchmark section 5 in its own process")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--frames", type=int, required=True)
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    from instructsam.modeling import InstructSAMModel

    transformers_logging.disable_progress_bar()
    model = InstructSAMModel.from_pretrained(args.checkpoint).eval()
    h, w = (int(v) for v in args.size.split("x"))
    result, targets = run_stream(model, args.frames, (h, w))
    args.out.write_text(json.dumps({"result": result, "targets": [t.as_dict() for t in targets]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

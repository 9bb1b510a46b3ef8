"""J&F of SAM3's tracker on synthetic videos (DAVIS semi-supervised protocol).

    python -m instructsam_tools.evaluation.tracker --checkpoint checkpoints/instructsam-tiny \
        --data synthetic_video:test:50 --out runs/tracker_eval

Each object visible on a video's first frame gets its ground-truth mask there (the frame is then excluded, as
DAVIS excludes it); the tracker runs through the pipeline's own `TrackerSession` (pruned streaming session on
features cached per frame) and its masks are compared with the ground truth on every later frame: J = region IoU,
F = boundary F-measure (instructsam_tools.evaluation.video), both 1 on frames where the object is absent and nothing is
predicted. J, F = mean over objects of the mean over frames; J&F = their mean. This isolates the tracker from the
detector; the full pipeline (detections on keyframes + tracking) is what the bag evaluation measures.

object_overlap: mean IoU between the masks predicted for two different prompted objects of one video on the same
frame (pairs where both are non-empty). Objects rarely overlap, so a tracker that follows *its* object scores near
0; one that ignores its prompt and segments the same thing for every object scores near 1 (the tracker's analogue
of the detector's pred_overlap).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from instructsam.pipeline.tracker_session import TrackerSession, mask_iou, set_memory_frames
from instructsam_tools.data.batching import build_dataset, first_frame_objects
from instructsam_tools.evaluation.video import boundary_fmeasure, region_similarity


@torch.no_grad()
def track_video(model, frames: np.ndarray, prompts: dict[int, np.ndarray], mask_threshold: float) -> dict:
    """object id -> (T-1, H, W) bool predicted masks on frames 1..T-1, given `prompts` on frame 0."""
    height, width = frames.shape[1:3]
    session = TrackerSession(model, height, width)
    predicted = {k: np.zeros((len(frames) - 1, height, width), dtype=bool) for k in prompts}
    for t in range(len(frames)):
        features = model.encode_image(frames[t], vlm=False)
        observations = session.predict(features, mask_threshold)
        if t == 0:
            session.condition(prompts, remove=[])
            continue
        for key, obs in observations.items():
            predicted[key][t - 1] = obs.mask if obs.visible else False
    return predicted


def pairwise_overlap(predicted: dict[int, np.ndarray]) -> tuple[float, int]:
    """(sum of IoUs, number of pairs) over every frame and every pair of objects whose predicted masks on that frame
    are both non-empty; predicted: object id -> (T, H, W) bool."""
    if len(predicted) < 2:
        return 0.0, 0
    stacked = np.stack(list(predicted.values()), axis=1)  # (T, N, H, W)
    total, pairs = 0.0, 0
    upper = np.triu_indices(stacked.shape[1], k=1)
    for masks in stacked:
        shown = masks.reshape(len(masks), -1).any(1)
        both = shown[upper[0]] & shown[upper[1]]
        total += float(mask_iou(masks, masks)[upper][both].sum())
        pairs += int(both.sum())
    return total, pairs


def evaluate_tracker(model, videos, max_videos: int | None = None, mask_threshold: float | None = None,
                     progress: bool = True) -> dict:
    """J, F, J&F over the videos' first-frame objects (see the module docstring), plus per-video values."""
    threshold = float(model.config.mask_threshold if mask_threshold is None else mask_threshold)
    count = len(videos) if max_videos is None else min(len(videos), max_videos)
    model.eval()
    per_video, j_all, f_all = [], [], []
    overlap_sum, overlap_pairs = 0.0, 0
    for i in tqdm(range(count), desc="track", unit="video", disable=not progress):
        video = videos[i]
        keys = first_frame_objects(video.masks)
        predicted = track_video(model, video.frames, {k: video.masks[k][0] for k in keys}, threshold)
        js, fs = [], []
        for k in keys:
            gt = video.masks[k][1:]
            js.append(float(np.mean([region_similarity(g, p) for g, p in zip(gt, predicted[k])])))
            fs.append(float(np.mean([boundary_fmeasure(g, p) for g, p in zip(gt, predicted[k])])))
        j_all += js
        f_all += fs
        total, pairs = pairwise_overlap(predicted)
        overlap_sum, overlap_pairs = overlap_sum + total, overlap_pairs + pairs
        per_video.append({"video_id": video.video_id, "objects": len(keys),
                          "J": float(np.mean(js)) if js else None, "F": float(np.mean(fs)) if fs else None})
    j = float(np.mean(j_all)) if j_all else float("nan")
    f = float(np.mean(f_all)) if f_all else float("nan")
    return {"J": j, "F": f, "J&F": (j + f) / 2, "videos": count, "objects": len(j_all),
            "object_overlap": overlap_sum / overlap_pairs if overlap_pairs else None,
            "frames_per_video": int(len(videos[0].frames)) if count else 0, "mask_threshold": threshold,
            "per_video": per_video}


def markdown(summary: dict, checkpoint: str, data: str) -> str:
    overlap = "–" if summary.get("object_overlap") is None else f"{summary['object_overlap']:.3f}"
    return "\n".join([
        f"# Tracker J&F: `{checkpoint}` on `{data}`", "",
        f"{summary['videos']} videos x {summary['frames_per_video']} frames, {summary['objects']} objects prompted "
        f"with their ground-truth mask on frame 0 (DAVIS semi-supervised protocol; frame 0 excluded).", "",
        "| J&F | J | F | object_overlap |", "|---|---|---|---|",
        f"| {summary['J&F']:.3f} | {summary['J']:.3f} | {summary['F']:.3f} | {overlap} |", "",
        "object_overlap: mean IoU between two prompted objects' predicted masks on the same frame (near 0: each "
        "object followed; near 1: the same mask for every object).", ""])


def main(argv: list[str] | None = None) -> dict:
    from instructsam_tools.evaluation.evaluate import load_model

    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.evaluation.tracker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="InstructSAM checkpoint directory")
    parser.add_argument("--data", default="synthetic_video:test:50", help="synthetic_video:SPLIT[:N]")
    parser.add_argument("--frames", type=int, default=12, help="frames per video")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    parser.add_argument("--mask-threshold", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-frames", type=int, default=0,
                        help="past frames the tracker reads (0: the checkpoint's own num_maskmem)")
    parser.add_argument("--tracker-scale", type=float, default=1.0,
                        help="the tracker on this x the detector's token grid (1: the same; a cost lever)")
    parser.add_argument("--out", default=None, help="directory for metrics.json and metrics.md")
    args = parser.parse_args(argv)
    if not args.data.startswith("synthetic_video:"):
        parser.error(f"--data must be synthetic_video:SPLIT[:N], got {args.data!r}")
    model = load_model(args.checkpoint, args.device)
    memory = set_memory_frames(model, args.memory_frames)
    try:
        size = model.set_tracker_scale(args.tracker_scale)
    except ValueError as err:
        parser.error(str(err))
    videos = build_dataset(args.data, image_size=args.image_size, seed=args.seed, clip_frames=args.frames)
    summary = evaluate_tracker(model, videos, mask_threshold=args.mask_threshold)
    summary.update(checkpoint=str(args.checkpoint), data=args.data, memory_frames=memory,
                   tracker_input_size=size)
    text = markdown(summary, args.checkpoint, args.data)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        (out / "metrics.md").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()

"""The demo scores itself: its synthetic camera renders a video whose every object mask is known, and the planner's
script says which objects each instruction means (scene.Step.targets). Each result is matched to the camera frame
it answers by the frame's pixels (the recorder keeps a digest of every camera frame under its header stamp, which
the node copies into the result), so a frame the node dropped is simply not scored.

Per instruction with targets: DAVIS J&F of the published instances against the targets visible in each scored
frame (evaluation.video.VideoEvaluator: one track per object for the whole instruction). For the no-target
instruction: the fraction of its result frames with no visible instance.
"""
from __future__ import annotations

import hashlib

import numpy as np

from instructsam.rle import decode_rle


def frame_digest(rgb: np.ndarray) -> str:
    """A digest of an (H, W, 3) uint8 frame's pixels (the camera's frames and the recorder's copies agree)."""
    return hashlib.blake2b(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes(), digest_size=16).hexdigest()


def score_instructions(results: list, frame_digests: dict, video, script: list[dict]) -> dict[str, dict]:
    """{step id: self-score} for every scripted step. results: demo.recorder.Result; frame_digests: the recorder's
    {header stamp (sec, nanosec): frame_digest}; video: the camera's VideoSample; script: Step.as_dict() each."""
    from instructsam_tools.evaluation.video import VideoEvaluator

    index_of: dict[str, int] = {}
    for t, frame in enumerate(video.frames):
        index_of.setdefault(frame_digest(frame), t)  # identical frames have identical ground truth
    scores = {}
    for step in script:
        mine = [r for r in results if r.instruction_id == step["id"]]
        matched = [(r, index_of.get(frame_digests.get(r.frame_key))) for r in mine]
        matched = [(r, t) for r, t in matched if t is not None]
        entry = {"targets": list(step["targets"]), "frames_scored": len(matched),
                 "frames_unmatched": len(mine) - len(matched)}
        if not step["targets"]:
            empty = sum(not r.visible for r, _ in matched)
            entry["empty_frames"] = empty
            entry["empty_fraction"] = empty / len(matched) if matched else None
        else:
            evaluator = VideoEvaluator()
            for r, t in matched:
                gt = {oid: video.masks[oid][t] for oid in step["targets"]
                      if video.masks[oid][t].sum() >= video.min_visible_area}
                pred = {tid: decode_rle(counts, h, w) for tid, (counts, h, w) in r.masks.items()}
                evaluator.add_frame(gt, pred)
            summary = evaluator.summarize() if matched else {}
            entry.update({k: summary.get(k) for k in ("J&F", "J", "F")})
        scores[step["id"]] = entry
    return scores


def format_self_score(score: dict) -> str:
    """One summary line: J&F for an instruction with targets, the empty-frame rate for the no-target one."""
    unmatched = f"; {score['frames_unmatched']} result frame(s) not matched to a camera frame" \
        if score["frames_unmatched"] else ""
    if not score["frames_scored"]:
        return f"self-score: no result frame could be scored{unmatched}"
    if not score["targets"]:
        return (f"self-score: {score['empty_frames']} of {score['frames_scored']} result frames empty "
                f"({100 * score['empty_fraction']:.0f} %; nothing in the video matches){unmatched}")
    jf = "-" if score["J&F"] is None else f"{score['J&F']:.2f} (J {score['J']:.2f}, F {score['F']:.2f})"
    return (f"self-score: J&F {jf} against objects {', '.join(map(str, score['targets']))} over "
            f"{score['frames_scored']} frames{unmatched}")

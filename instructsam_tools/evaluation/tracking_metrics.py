"""Multi-object tracking metrics from TrackEval, the field's reference implementation (HOTA of Luiten et al. 2021
with DetA, AssA and LocA; IDF1; CLEAR-MOT's MOTA, MOTP and IDSW), on mask IoU as TrackEval's MOTS setting uses it.

VideoEvaluator stores, per frame, the gt object ids, the track ids and their mask IoU; `sequence_data` turns that
into TrackEval's per-sequence input (ids renumbered 0..n-1 per sequence, as its datasets do), and TrackEval's own
metric classes compute and combine. The package's frame-by-frame identity matching (video.IdentityMatcher, for
the timeline) follows CLEAR's rule; tests check its switch count against TrackEval's IDSW on every fixture.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

MATCH_THRESHOLD = 0.5  # CLEAR and Identity: a gt/track pair matches from this IoU (TrackEval's default)
KEYS = ("HOTA", "DetA", "AssA", "LocA", "IDF1", "MOTA", "MOTP", "IDSW", "CLR_TP", "CLR_FN", "CLR_FP")


def _metrics():
    """TrackEval's HOTA, CLEAR and Identity (imported quietly: its package import reports optional datasets)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from trackeval.metrics import CLEAR, HOTA, Identity
    config = {"THRESHOLD": MATCH_THRESHOLD, "PRINT_CONFIG": False}
    return {"HOTA": HOTA({"PRINT_CONFIG": False}), "CLEAR": CLEAR(config), "Identity": Identity(config)}


def sequence_data(gt_ids: list[list], track_ids: list[list], similarity: list[np.ndarray]) -> dict:
    """TrackEval's per-sequence input from per-frame id lists and (num_gt, num_tracks) IoU matrices."""
    gt_index = {g: k for k, g in enumerate(dict.fromkeys(g for frame in gt_ids for g in frame))}
    track_index = {t: k for k, t in enumerate(dict.fromkeys(t for frame in track_ids for t in frame))}
    return {
        "num_timesteps": len(gt_ids), "num_gt_ids": len(gt_index), "num_tracker_ids": len(track_index),
        "num_gt_dets": sum(len(f) for f in gt_ids), "num_tracker_dets": sum(len(f) for f in track_ids),
        "gt_ids": [np.array([gt_index[g] for g in f], dtype=int) for f in gt_ids],
        "tracker_ids": [np.array([track_index[t] for t in f], dtype=int) for f in track_ids],
        "similarity_scores": [np.asarray(s, dtype=float).reshape(len(g), len(t))
                              for s, g, t in zip(similarity, gt_ids, track_ids)],
    }


def evaluate_sequence(data: dict) -> dict:
    """TrackEval's raw per-sequence results: {metric class name: its result dict}."""
    return {name: metric.eval_sequence(data) for name, metric in _metrics().items()}


def combine(raw: dict[str, dict]) -> dict:
    """Several sequences' raw results ({sequence: evaluate_sequence(...)}) combined as TrackEval combines them."""
    metrics = _metrics()
    return {name: metric.combine_sequences({seq: res[name] for seq, res in raw.items()})
            for name, metric in metrics.items()}


def summary(raw: dict) -> dict:
    """The report's numbers from one raw result: HOTA, DetA, AssA, LocA (means over TrackEval's IoU alphas, as its
    summaries report them), IDF1, MOTA, MOTP and the counts."""
    hota, clear, identity = raw["HOTA"], raw["CLEAR"], raw["Identity"]
    out = {k: float(np.mean(hota[k])) for k in ("HOTA", "DetA", "AssA", "LocA")}
    out.update(IDF1=float(identity["IDF1"]), MOTA=float(clear["MOTA"]), MOTP=float(clear["MOTP"]),
               IDSW=int(clear["IDSW"]), CLR_TP=int(clear["CLR_TP"]), CLR_FN=int(clear["CLR_FN"]),
               CLR_FP=int(clear["CLR_FP"]))
    return out


__all__ = ["KEYS", "MATCH_THRESHOLD", "sequence_data", "evaluate_sequence", "combine", "summary"]

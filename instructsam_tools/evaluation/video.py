"""Video / bag metrics: DAVIS J&F per object, TrackEval's tracking metrics, latency statistics.

J and F follow davis2017-evaluation (davis2017/metrics.py): J = region IoU (1 when both masks are
empty); F = boundary F-measure on 1-pixel boundary maps (_seg2bmap), matched within a disk of
radius ceil(0.008 * image diagonal) by dilation. As in DAVIS' unsupervised protocol, each gt
object is assigned to one predicted track for the whole sequence by Hungarian matching on the
sequence-mean (J+F)/2 (unassigned objects get an empty track); J, F = mean over objects of the
mean over frames. Unlike DAVIS semi-supervised, no frame is excluded (there is no given first-frame
mask here). Frames where an object is absent count as empty masks.

Tracking metrics (HOTA with DetA/AssA/LocA, IDF1, CLEAR-MOT's MOTA/MOTP/IDSW) come from TrackEval
(tracking_metrics.py) on the per-frame mask IoU this evaluator stores. IdentityMatcher gives the per-frame
identity switches of the timeline with CLEAR's rule as TrackEval implements it: per frame, a gt object keeps the
track it matched in the previous frame if that pair still has IoU >= 0.5; the rest are matched by Hungarian
assignment on IoU (pairs below 0.5 are not allowed); a switch is a gt object matched to a track other than the
one it was last matched to, however many frames ago.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from instructsam_tools.evaluation import tracking_metrics
from instructsam_tools.evaluation.masks import as_bool, encode, iou_matrix

MATCH_IOU = tracking_metrics.MATCH_THRESHOLD


# ----------------------------------------------------------------------------- J and F (DAVIS)
def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """DAVIS J: |gt ∩ pred| / |gt ∪ pred|, 1 when both are empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.logical_or(gt, pred).sum()
    return 1.0 if union == 0 else float(np.logical_and(gt, pred).sum() / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS' 1-pixel boundary map (boundaries offset half a pixel towards the origin)."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: float) -> np.ndarray:
    """skimage.morphology.disk (strict radius), which DAVIS uses as the dilation element."""
    r = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(r, r)
    return (x ** 2 + y ** 2 <= radius ** 2).astype(np.uint8)


def boundary_fmeasure(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS F: boundary precision/recall within a tolerance of bound_th * image diagonal pixels."""
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape[:2]))
    fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0  # precision or recall is 0 (DAVIS sets the other to 1)
    disk = _disk(bound_pix)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), disk).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk).astype(bool)
    precision = np.logical_and(fg_b, gt_dil).sum() / n_fg
    recall = np.logical_and(gt_b, fg_dil).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


# ------------------------------------------------------------------------- identity switches
class IdentityMatcher:
    """CLEAR-MOT frame-to-frame matching of gt objects to predicted track ids (the timeline's switches)."""

    def __init__(self, iou_threshold: float = MATCH_IOU):
        self.iou_threshold = iou_threshold
        self.last_match: dict = {}  # gt id -> track id of its most recent match
        self.previous: dict = {}  # gt id -> track id matched in the previous frame
        self.id_switches = 0

    def update(self, gt_ids: list, track_ids: list, ious: np.ndarray) -> dict:
        """Match one frame given its (num_gt, num_tracks) IoU; returns {gt_id: (track_id, iou)}."""
        matched: dict = {}
        free_g, free_t = set(range(len(gt_ids))), set(range(len(track_ids)))
        # 1) keep the previous frame's correspondences that are still valid
        for gi, g in enumerate(gt_ids):
            t = self.previous.get(g)
            if t in track_ids:
                ti = track_ids.index(t)
                if ti in free_t and ious[gi, ti] >= self.iou_threshold:
                    matched[g] = (t, float(ious[gi, ti]))
                    free_g.discard(gi)
                    free_t.discard(ti)
        # 2) Hungarian on the rest, maximising IoU over the allowed pairs
        rows, cols = sorted(free_g), sorted(free_t)
        if rows and cols:
            sub = ious[np.ix_(rows, cols)]
            valid = sub >= self.iou_threshold
            for r, c in zip(*linear_sum_assignment(np.where(valid, sub, 0.0), maximize=True)):
                if valid[r, c]:
                    matched[gt_ids[rows[r]]] = (track_ids[cols[c]], float(sub[r, c]))
        for g, (t, _) in matched.items():
            if g in self.last_match and self.last_match[g] != t:
                self.id_switches += 1
            self.last_match[g] = t
        self.previous = {g: t for g, (t, _) in matched.items()}
        return matched


# --------------------------------------------------------------------------------- latency
def latency_stats(latencies_ms) -> dict:
    """p50 / p95 (numpy linear interpolation), mean and max of a list of latencies in ms."""
    x = np.asarray(list(latencies_ms), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    return {"n": int(x.size), "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)), "mean": float(x.mean()), "max": float(x.max())}


# --------------------------------------------------------------------------- the accumulator
class VideoEvaluator:
    """Accumulate frames of one sequence (one instruction); summarize() gives J&F, IDs, latency.

    Only (J, F) of gt/track pairs present in the same frame are stored, not the masks: a pair
    where only one side is present scores (0, 0) and a frame where both are absent scores (1, 1).
    """

    def __init__(self, bound_th: float = 0.008, iou_threshold: float = MATCH_IOU):
        self.bound_th = bound_th
        self.ids = IdentityMatcher(iou_threshold)
        self.frame_ids: list[tuple[list, list]] = []  # (gt ids, track ids) per frame, for TrackEval
        self.similarity: list[np.ndarray] = []  # (num_gt, num_tracks) mask IoU per frame
        self.gt_frames: list[set] = []  # gt ids present per frame
        self.track_frames: list[set] = []  # track ids present per frame
        self.pair_scores: dict = {}  # (gt id, track id) -> {frame: (J, F)}
        self.frames: list[dict] = []  # per-frame timeline for plots
        self.latencies: list[float] = []

    def add_frame(self, gt_masks_by_id: dict, pred_masks_by_track: dict,
                  latency_ms: float | None = None) -> dict:
        """Add one frame; masks are (H, W) bool, empty masks count as absent. Returns the
        frame's timeline entry."""
        idx = len(self.frames)
        gt = {k: as_bool(m, f"frame {idx} gt {k!r}") for k, m in gt_masks_by_id.items()}
        pred = {k: as_bool(m, f"frame {idx} track {k!r}") for k, m in pred_masks_by_track.items()}
        gt = {k: m for k, m in gt.items() if m.any()}
        pred = {k: m for k, m in pred.items() if m.any()}
        shapes = {m.shape for m in [*gt.values(), *pred.values()]}
        if len(shapes) > 1:
            raise ValueError(f"frame {idx}: masks of different shapes {sorted(shapes)}")
        if any(len(shape) != 2 for shape in shapes):
            raise ValueError(f"frame {idx}: expected (H, W) masks, got shapes {sorted(shapes)}")
        for g, gm in gt.items():
            for t, pm in pred.items():
                j = region_similarity(gm, pm)
                f = boundary_fmeasure(gm, pm, self.bound_th)
                self.pair_scores.setdefault((g, t), {})[idx] = (j, f)
        self.gt_frames.append(set(gt))
        self.track_frames.append(set(pred))

        gt_ids, track_ids = list(gt), list(pred)
        ious = iou_matrix(encode(np.stack(list(gt.values()))) if gt else [],
                          encode(np.stack(list(pred.values()))) if pred else [])
        self.frame_ids.append((gt_ids, track_ids))
        self.similarity.append(ious)
        before = self.ids.id_switches
        matched = self.ids.update(gt_ids, track_ids, ious)
        entry = {"frame": idx, "num_gt": len(gt), "num_pred": len(pred), "matches": len(matched),
                 "id_switches": self.ids.id_switches - before,
                 "id_switches_cum": self.ids.id_switches,
                 "mean_matched_iou": (float(np.mean([v[1] for v in matched.values()]))
                                      if matched else None),
                 "latency_ms": latency_ms}
        if latency_ms is not None:
            self.latencies.append(float(latency_ms))
        self.frames.append(entry)
        return entry

    def _pair_series(self, g, t) -> np.ndarray:
        """(num_frames, 2) J, F of gt object g against track t (t=None: an empty track)."""
        scores = self.pair_scores.get((g, t), {})
        out = np.zeros((len(self.frames), 2))
        for i, (gs, ts) in enumerate(zip(self.gt_frames, self.track_frames)):
            g_in, t_in = g in gs, t is not None and t in ts
            if g_in and t_in:
                out[i] = scores[i]
            elif not g_in and not t_in:
                out[i] = 1.0
        return out

    def _assign(self) -> list[tuple]:
        """DAVIS-unsupervised assignment: [(gt id, track id or None, (frames, 2) J/F series)]."""
        gt_ids = sorted({g for s in self.gt_frames for g in s}, key=str)
        tracks = sorted({t for s in self.track_frames for t in s}, key=str)
        if not gt_ids:
            return []
        # candidates: every track plus one empty track per gt object (DAVIS zero-pads)
        candidates = tracks + [None] * len(gt_ids)
        series = [[self._pair_series(g, t) for t in candidates] for g in gt_ids]
        score = np.array([[s.mean() for s in row] for row in series])  # mean of (J + F) / 2
        rows, cols = linear_sum_assignment(-score)
        return [(gt_ids[r], candidates[c], series[r][c]) for r, c in zip(rows, cols)]

    def timeline(self) -> list[dict]:
        """Per-frame entries (see add_frame) plus J and F averaged over the gt objects present."""
        assigned = self._assign()
        out = []
        for i, entry in enumerate(self.frames):
            present = [s[i] for g, _, s in assigned if g in self.gt_frames[i]]
            j, f = np.mean(present, axis=0) if present else (None, None)
            out.append({**entry, "J": None if j is None else float(j),
                        "F": None if f is None else float(f)})
        return out

    def trackeval_raw(self) -> dict:
        """TrackEval's raw results for this sequence (tracking_metrics.evaluate_sequence)."""
        gt_ids = [g for g, _ in self.frame_ids]
        track_ids = [t for _, t in self.frame_ids]
        return tracking_metrics.evaluate_sequence(tracking_metrics.sequence_data(gt_ids, track_ids,
                                                                                 self.similarity))

    def summarize(self) -> dict:
        out = {"num_frames": len(self.frames), **tracking_summary(self.trackeval_raw()),
               "latency_ms": latency_stats(self.latencies)}
        assigned = self._assign()
        if not assigned:
            out.update({"J": None, "F": None, "J&F": None, "per_object": {}})
            return out
        per_object = {}
        for g, t, series in assigned:
            j, f = series.mean(0)
            per_object[str(g)] = {"track": t, "J": float(j), "F": float(f),
                                  "J&F": float((j + f) / 2)}
        j = float(np.mean([v["J"] for v in per_object.values()]))
        f = float(np.mean([v["F"] for v in per_object.values()]))
        out.update({"J": j, "F": f, "J&F": (j + f) / 2, "per_object": per_object})
        return out


def tracking_summary(raw: dict) -> dict:
    """The report's tracking numbers from TrackEval's raw results, under the report's names; with no gt object at
    all the ratios are None (TrackEval would divide by max(1, 0))."""
    t = tracking_metrics.summary(raw)
    out = {"num_gt": t["CLR_TP"] + t["CLR_FN"], "matches": t["CLR_TP"], "misses": t["CLR_FN"],
           "false_positives": t["CLR_FP"], "id_switches": t["IDSW"]}
    defined = out["num_gt"] > 0
    out.update({k: t[k] if defined else None for k in ("MOTA", "MOTP", "IDF1", "HOTA", "DetA", "AssA", "LocA")})
    return out


def summarize_sequences(evaluators: dict) -> dict:
    """Several sequences (e.g. one per bag x instruction), {name: VideoEvaluator}, combined as
    DAVIS does: J, F = mean over all objects of all sequences; counts summed; latency pooled."""
    per_sequence = {name: ev.summarize() for name, ev in evaluators.items()}
    objects = [o for s in per_sequence.values() for o in s["per_object"].values()]
    j = float(np.mean([o["J"] for o in objects])) if objects else None
    f = float(np.mean([o["F"] for o in objects])) if objects else None
    combined = tracking_metrics.combine({name: ev.trackeval_raw() for name, ev in evaluators.items()}) \
        if evaluators else None
    tracking = tracking_summary(combined) if combined else {
        "num_gt": 0, "matches": 0, "misses": 0, "false_positives": 0, "id_switches": 0,
        **dict.fromkeys(("MOTA", "MOTP", "IDF1", "HOTA", "DetA", "AssA", "LocA"))}
    return {"num_frames": sum(s["num_frames"] for s in per_sequence.values()), **tracking, "J": j, "F": f,
            "J&F": None if j is None else (j + f) / 2,
            "latency_ms": latency_stats(x for ev in evaluators.values() for x in ev.latencies),
            "per_sequence": per_sequence}

"""Accumulate per-sample results for instance-set (instruction -> 0..N masks) segmentation.

Metrics (all in [0, 1]; None when undefined, e.g. N-acc without no-target samples):
  mAP, AP50, AP75  pycocotools COCOeval (segm); each (image, instruction) is its own image, one
                   category; uses *all* predictions ranked by score (see coco_ap.py).
  gIoU, cIoU       GRES (Liu et al., CVPR 2023; ReLA refer_evaluation.py): per sample the union of
                   kept predicted masks vs the union of gt masks. gIoU = mean per-sample IoU, where
                   a no-target sample scores 1 if nothing is predicted else 0; cIoU = sum(I)/sum(U)
                   over all samples (a no-target sample adds its predicted area to U).
  N-acc, T-acc     GRES: N-acc = no-target samples predicted empty / no-target samples;
                   T-acc = has-target samples predicted non-empty / has-target samples.
                   (no-target = positive: TP/(TP+FN) and TN/(TN+FP). ReLA's released
                   refer_evaluation.py computes TP/(TP+FN+1) and TP/(TP+FP+1) instead; we do not
                   copy those +1s nor its T_acc numerator.)
  P@0.5/0.7/0.9,   DIT (Huang et al. 2024; DIT utils.mask_iou / test.py): over has-target samples
  mIoU, oIoU       (DIT's benchmarks have no empty targets): P@x = fraction with IoU > x (strict,
                   as DIT), mIoU = mean IoU, oIoU = sum(I)/sum(U).
  duplicate_rate   kept predictions, greedily in score order, that reach IoU > 0.5 only with
                   targets an earlier prediction already covered, over all kept predictions.
  pred_overlap     mean mask IoU over all pairs of kept predictions of the same sample: near 0 for a
                   set of distinct instances, near 1 when the slots collapse onto one mask (e.g. all
                   of them predicting the union of the objects); None without any pair.
"Kept" predictions are those with score >= score_threshold; a sample is "predicted empty" when the
union of its kept masks has no pixel.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from instructsam_tools.evaluation.coco_ap import APRecord, segm_ap
from instructsam_tools.evaluation.masks import check_masks, encode, iou_matrix

PRECISION_THRESHOLDS = (0.5, 0.7, 0.9)
DUPLICATE_IOU = 0.5


@dataclass
class SampleResult:
    """Everything summarize() needs from one sample (masks kept only as RLEs)."""

    sample_id: object
    family: str
    has_target: bool
    pred_empty: bool
    inter: int  # |union(pred) ∩ union(gt)|
    union: int  # |union(pred) ∪ union(gt)|
    iou: float  # GRES convention for no-target samples
    num_kept: int
    num_duplicates: int
    pair_iou_sum: float  # sum of mask IoUs over the pairs of kept predictions
    num_pairs: int
    ap: APRecord = field(repr=False)


def count_duplicates(pred_rles: list, gt_rles: list, iou_thr: float = DUPLICATE_IOU) -> int:
    """Predictions (in descending score order) whose every IoU > thr target is already taken."""
    ious = iou_matrix(pred_rles, gt_rles)
    covered = np.zeros(len(gt_rles), dtype=bool)
    duplicates = 0
    for row in ious:
        hits = row > iou_thr
        if not hits.any():
            continue  # a plain false positive, not a duplicate
        free = hits & ~covered
        if free.any():
            covered[np.argmax(np.where(free, row, -1.0))] = True
        else:
            duplicates += 1
    return duplicates


def evaluate_sample(sample_id, image_id: int, gt_masks: np.ndarray, prediction,
                    family: str = "", score_threshold: float = 0.5) -> SampleResult:
    """Score one sample. `prediction` is anything with masks (M,H,W), scores (M,), boxes (M,4)."""
    gt = check_masks(gt_masks, f"sample {sample_id!r} gt_masks")
    pred = check_masks(prediction.masks, f"sample {sample_id!r} prediction.masks")
    scores = np.asarray(prediction.scores, dtype=np.float64).reshape(-1)
    h, w = gt.shape[1:]
    if pred.shape[1:] != (h, w):
        raise ValueError(f"sample {sample_id!r}: prediction masks {pred.shape[1:]} "
                         f"do not match gt masks {(h, w)}")
    if len(scores) != len(pred):
        raise ValueError(f"sample {sample_id!r}: {len(pred)} masks but {len(scores)} scores")
    empty_gt = ~gt.any(axis=(1, 2))
    if empty_gt.any():
        # An empty gt mask can never be matched; drop it so every metric sees the same targets.
        warnings.warn(f"sample {sample_id!r}: dropping {int(empty_gt.sum())} empty gt mask(s)")
        gt = gt[~empty_gt]

    order = np.argsort(-scores, kind="stable")
    pred, scores = pred[order], scores[order]
    kept = scores >= score_threshold
    gt_union = gt.any(0)
    pred_union = pred[kept].any(0)
    inter = int(np.logical_and(gt_union, pred_union).sum())
    union = int(np.logical_or(gt_union, pred_union).sum())
    has_target = len(gt) > 0
    pred_empty = not pred_union.any()
    iou = inter / union if has_target else float(pred_empty)

    gt_rles, pred_rles = encode(gt), encode(pred)
    kept_rles = [r for r, k in zip(pred_rles, kept) if k]
    pair_ious = iou_matrix(kept_rles, kept_rles)[np.triu_indices(len(kept_rles), k=1)]
    return SampleResult(
        sample_id=sample_id, family=family, has_target=has_target, pred_empty=pred_empty,
        inter=inter, union=union, iou=iou, num_kept=int(kept.sum()),
        num_duplicates=count_duplicates(kept_rles, gt_rles),
        pair_iou_sum=float(pair_ious.sum()), num_pairs=len(pair_ious),
        ap=APRecord(image_id, h, w, gt_rles, pred_rles, scores.tolist()))


def _ratio(num: float, den: float):
    return float(num) / float(den) if den else None


def summarize_results(results: list[SampleResult], max_dets: int = 100) -> dict:
    """The metric dict for a list of SampleResults (no per-family breakdown)."""
    targeted = [r for r in results if r.has_target]
    no_target = [r for r in results if not r.has_target]
    num_kept = sum(r.num_kept for r in results)
    out = {"num_samples": len(results), "num_no_target": len(no_target),
           "num_kept_predictions": num_kept}
    out.update(segm_ap([r.ap for r in results], max_dets=max_dets))
    out["gIoU"] = _ratio(sum(r.iou for r in results), len(results))
    out["cIoU"] = _ratio(sum(r.inter for r in results), sum(r.union for r in results))
    out["N-acc"] = _ratio(sum(r.pred_empty for r in no_target), len(no_target))
    out["T-acc"] = _ratio(sum(not r.pred_empty for r in targeted), len(targeted))
    for thr in PRECISION_THRESHOLDS:
        out[f"P@{thr}"] = _ratio(sum(r.iou > thr for r in targeted), len(targeted))
    out["mIoU"] = _ratio(sum(r.iou for r in targeted), len(targeted))
    out["oIoU"] = _ratio(sum(r.inter for r in targeted), sum(r.union for r in targeted))
    out["duplicate_rate"] = _ratio(sum(r.num_duplicates for r in results), num_kept)
    out["pred_overlap"] = _ratio(sum(r.pair_iou_sum for r in results), sum(r.num_pairs for r in results))
    return out


class InstanceSetEvaluator:
    """Accumulator: add() one sample at a time, summarize() for overall and per-family metrics.

        ev = InstanceSetEvaluator(score_threshold=0.5)
        for sample, pred in ...:
            ev.add(sample.instruction_id, sample.masks, pred, family=sample.family)
        metrics = ev.summarize()  # {..., "per_family": {family: {...}}}
    """

    def __init__(self, score_threshold: float = 0.5, max_dets: int = 100):
        self.score_threshold = score_threshold
        self.max_dets = max_dets
        self.results: list[SampleResult] = []
        self._ids: set = set()

    def add(self, sample_id, gt_masks: np.ndarray, prediction, family: str = "") -> SampleResult:
        if sample_id in self._ids:
            raise ValueError(f"sample id {sample_id!r} was already added")
        self._ids.add(sample_id)
        # COCO needs integer image ids; the sample's position is unique and stable.
        result = evaluate_sample(sample_id, len(self.results) + 1, gt_masks, prediction,
                                 family=family, score_threshold=self.score_threshold)
        self.results.append(result)
        return result

    def summarize(self) -> dict:
        out = summarize_results(self.results, self.max_dets)
        out["score_threshold"] = self.score_threshold
        families = sorted({r.family for r in self.results})
        out["per_family"] = {f: summarize_results([r for r in self.results if r.family == f],
                                                  self.max_dets) for f in families}
        return out

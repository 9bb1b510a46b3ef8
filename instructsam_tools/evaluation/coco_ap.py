"""mAP / AP50 / AP75 with pycocotools COCOeval (segm) over instruction samples.

Every (image, instruction) pair is its own COCO image with a single category, so an instance only
counts as found for the instruction that asked for it; detections on a no-target sample are all
false positives. Numbers are pycocotools' own (101-point interpolated AP, maxDets=100 per sample).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass
class APRecord:
    """What COCOeval needs from one sample; masks are already COCO RLEs."""

    image_id: int
    height: int
    width: int
    gt_rles: list
    dt_rles: list
    dt_scores: list


def _coco(images: list, annotations: list) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": 1, "name": "target"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints
        coco.createIndex()
    return coco


def build_coco(records: list[APRecord]) -> tuple[COCO, COCO]:
    """The ground-truth and detection COCO objects for `records`."""
    images, gts, dts = [], [], []
    for r in records:
        images.append({"id": r.image_id, "height": r.height, "width": r.width})
        for rle in r.gt_rles:
            gts.append({"id": len(gts) + 1, "image_id": r.image_id, "category_id": 1, "iscrowd": 0,
                        "segmentation": rle, "area": float(_area(rle)), "bbox": _bbox(rle)})
        for rle, score in zip(r.dt_rles, r.dt_scores):
            dts.append({"id": len(dts) + 1, "image_id": r.image_id, "category_id": 1, "iscrowd": 0,
                        "segmentation": rle, "area": float(_area(rle)), "bbox": _bbox(rle),
                        "score": float(score)})
    # Detections are indexed directly (not via COCO.loadRes, which fails on an empty list).
    return _coco(images, gts), _coco(images, dts)


def segm_ap(records: list[APRecord], max_dets: int = 100) -> dict:
    """{'mAP', 'AP50', 'AP75'} in [0, 1]; None when there is no ground-truth instance at all."""
    if not any(r.gt_rles for r in records):
        return {"mAP": None, "AP50": None, "AP75": None}
    coco_gt, coco_dt = build_coco(records)
    ev = COCOeval(coco_gt, coco_dt, iouType="segm")
    ev.params.imgIds = [r.image_id for r in records]
    ev.params.maxDets = [1, 10, max_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats[0..2] = AP@[.5:.95], AP@.5, AP@.75 (area 'all', maxDets[2]); -1 means "undefined".
    return {k: (None if ev.stats[i] < 0 else float(ev.stats[i]))
            for i, k in enumerate(("mAP", "AP50", "AP75"))}


def _area(rle: dict) -> int:
    return int(mask_utils.area(rle))


def _bbox(rle: dict) -> list:
    return [float(v) for v in mask_utils.toBbox(rle)]

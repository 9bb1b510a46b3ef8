"""Metrics: COCOeval agreement, hand-computed GRES/DIT set metrics, DAVIS J&F, tracking metrics (TrackEval)."""
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instructsam_tools.evaluation.metrics import (InstanceSetEvaluator, VideoEvaluator,
                                            boundary_fmeasure, count_duplicates, latency_stats,
                                            region_similarity, seg2bmap, summarize_sequences)
from instructsam_tools.evaluation.masks import encode
from instructsam.outputs import Prediction

H = W = 10


def box(r0, r1, c0, c1, h=H, w=W):
    """Bool mask with rows r0..r1-1 and cols c0..c1-1 set."""
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def pred(masks, scores, h=H, w=W):
    if not masks:
        return Prediction.empty(h, w)
    masks = np.stack(masks)
    boxes = np.zeros((len(masks), 4), np.float32)  # boxes are not used by the mask metrics
    return Prediction(masks=masks, scores=np.asarray(scores, np.float32), boxes=boxes)


def gts(*masks, h=H, w=W):
    return np.stack(masks) if masks else np.zeros((0, h, w), bool)


A, B = box(0, 2, 0, 5), box(5, 7, 0, 5)  # 10 px each
C = box(0, 4, 0, 4)  # 16 px
D = box(2, 5, 2, 5)  # 9 px

# (sample id, family, gt masks, prediction); score threshold 0.5
FIXTURE = [
    # S1: p1 = A, p2 = A again (duplicate), p3 = 6 of B's 10 px (IoU 0.6), p4 below threshold.
    ("s1", "category", gts(A, B),
     pred([A, A, box(5, 7, 0, 3), box(8, 10, 8, 10)], [0.9, 0.8, 0.7, 0.3])),
    # S2: half of C predicted: I = 8, U = 16.
    ("s2", "category", gts(C), pred([box(0, 4, 0, 2)], [0.6])),
    # S3: no target, nothing predicted.
    ("s3", "no_target", gts(), pred([], [])),
    # S4: no target, a 5 px mask predicted.
    ("s4", "no_target", gts(), pred([box(0, 1, 0, 5)], [0.9])),
    # S5: target D, the only prediction is exact but scored below the threshold -> predicted empty.
    ("s5", "category", gts(D), pred([D], [0.2])),
]


def run_fixture(score_threshold=0.5):
    ev = InstanceSetEvaluator(score_threshold=score_threshold)
    for sid, fam, g, p in FIXTURE:
        ev.add(sid, g, p, family=fam)
    return ev.summarize()


def test_set_metrics_hand_computed():
    m = run_fixture()
    # per-sample (I, U, IoU): s1 (16, 20, 0.8): kept preds cover A (10) + 6 px of B, all inside gt;
    # s2 (8, 16, 0.5); s3 no target & empty -> IoU 1, adds 0/0; s4 no target, 5 px -> IoU 0, U += 5;
    # s5 nothing kept -> (0, 9, 0).
    assert m["gIoU"] == pytest.approx((0.8 + 0.5 + 1 + 0 + 0) / 5)  # 0.46
    assert m["cIoU"] == pytest.approx((16 + 8) / (20 + 16 + 5 + 9))  # 24/50
    assert m["N-acc"] == pytest.approx(1 / 2)  # s3 empty, s4 not
    assert m["T-acc"] == pytest.approx(2 / 3)  # s1, s2 non-empty; s5 empty
    # DIT metrics over has-target samples s1, s2, s5 with IoU 0.8, 0.5, 0; P@x is strict (IoU > x)
    assert m["P@0.5"] == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    assert m["P@0.7"] == pytest.approx(1 / 3)
    assert m["P@0.9"] == pytest.approx(0.0)
    assert m["mIoU"] == pytest.approx(1.3 / 3)
    assert m["oIoU"] == pytest.approx(24 / (20 + 16 + 9))
    # kept predictions: 3 (s1) + 1 (s2) + 1 (s4) = 5; one duplicate (s1's second A)
    assert m["duplicate_rate"] == pytest.approx(1 / 5)
    # pairs of kept predictions: only s1 has any (A-A 1, A-p3 0, A-p3 0)
    assert m["pred_overlap"] == pytest.approx(1 / 3)
    assert (m["num_samples"], m["num_no_target"], m["num_kept_predictions"]) == (5, 2, 5)

    fam = m["per_family"]
    assert set(fam) == {"category", "no_target"}
    assert fam["category"]["gIoU"] == pytest.approx(1.3 / 3)
    assert fam["category"]["N-acc"] is None  # no no-target sample in this family
    assert fam["no_target"]["gIoU"] == pytest.approx(0.5)
    assert fam["no_target"]["cIoU"] == pytest.approx(0.0)  # 0 / 5
    assert fam["no_target"]["T-acc"] is None and fam["no_target"]["mIoU"] is None
    assert fam["no_target"]["mAP"] is None  # no gt instance at all
    json.dumps(m, allow_nan=False)  # the summary is plain JSON


def test_threshold_changes_set_metrics_not_ap():
    low, high = run_fixture(0.1), run_fixture(0.5)
    # at 0.1, s5's exact mask is kept (IoU 1) and s1 also keeps its 4th mask (outside gt: U += 4)
    assert low["gIoU"] == pytest.approx((16 / 24 + 0.5 + 1 + 0 + 1) / 5)
    assert low["mAP"] == high["mAP"]


def independent_cocoeval(tmp_path, samples):
    """COCOeval from JSON files written here, without the evaluator's own COCO builder."""
    images, anns, dets = [], [], []
    for img_id, (_, _, g, p) in enumerate(samples, start=1):
        images.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.png"})
        for m in g:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 7, "iscrowd": 0,
                         "area": int(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(),
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        for m, s in zip(p.masks, p.scores):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            dets.append({"image_id": img_id, "category_id": 7, "score": float(s),
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 7, "name": "thing"}]}))
    coco = COCO(str(path))
    ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:3]


def test_ap_matches_pycocotools_cocoeval(tmp_path):
    m = run_fixture()
    ref = independent_cocoeval(tmp_path, FIXTURE)
    assert [m["mAP"], m["AP50"], m["AP75"]] == pytest.approx(list(ref), abs=1e-12)
    assert 0 < m["mAP"] < 1  # the fixture is not a degenerate all-or-nothing case


def test_ap_hand_computed():
    g = box(0, 5, 0, 5)  # 25 px
    # a false positive ranked above an exact match: precision 1/2 at recall 1 -> AP 0.5 everywhere
    ev = InstanceSetEvaluator()
    ev.add(0, gts(g), pred([box(6, 8, 6, 8), g], [0.9, 0.8]))
    m = ev.summarize()
    assert (m["mAP"], m["AP50"], m["AP75"]) == pytest.approx((0.5, 0.5, 0.5))
    # one detection with IoU 16/25 = 0.64: matched at thresholds .50, .55, .60 of ten -> mAP 0.3
    ev = InstanceSetEvaluator()
    ev.add(0, gts(g), pred([box(0, 4, 0, 4)], [0.9]))
    m = ev.summarize()
    assert (m["mAP"], m["AP50"], m["AP75"]) == pytest.approx((0.3, 1.0, 0.0))
    # no detections at all: AP 0; no gt at all: undefined
    ev = InstanceSetEvaluator()
    ev.add(0, gts(g), pred([], []))
    assert ev.summarize()["mAP"] == 0.0
    ev = InstanceSetEvaluator()
    ev.add(0, gts(), pred([g], [0.9]))
    assert ev.summarize()["mAP"] is None


def test_duplicates():
    t1, t2 = box(0, 5, 0, 5), box(5, 10, 5, 10)
    # in score order: t1 (covers t1), t1 again (dup), t1 again (dup), t2 (covers t2), nothing (FP)
    preds = encode(np.stack([t1, t1, t1, t2, box(0, 2, 8, 10)]))
    assert count_duplicates(preds, encode(np.stack([t1, t2]))) == 2
    # overlapping targets ta, tb (IoU(ta, tb) = 20/30): a second copy of ta also hits the still
    # free tb and takes it; only the third copy is a duplicate
    ta, tb = box(0, 5, 0, 5), box(0, 5, 1, 6)
    assert count_duplicates(encode(np.stack([ta, ta, ta])), encode(np.stack([ta, tb]))) == 1
    # IoU exactly 0.5 is not a hit (> 0.5): a plain false positive
    assert count_duplicates(encode(np.stack([t1, box(0, 5, 0, 10)])), encode(np.stack([t1]))) == 0


def test_input_errors():
    ev = InstanceSetEvaluator()
    ev.add("x", gts(A), pred([A], [0.9]))
    with pytest.raises(ValueError, match="already added"):
        ev.add("x", gts(A), pred([A], [0.9]))
    with pytest.raises(ValueError, match="do not match"):
        ev.add("y", gts(A), pred([box(0, 1, 0, 1, h=5, w=5)], [0.9], h=5, w=5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ev.add("z", A, pred([A], [0.9]))
    soft = Prediction(masks=np.full((1, H, W), 0.2, np.float32), scores=np.ones(1),
                      boxes=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="expected bool masks, got float32"):
        ev.add("w", gts(A), soft)  # probabilities must be binarised by the caller, not by ">0"
    with pytest.raises(ValueError, match="frame 0 track 't'.*float64"):
        VideoEvaluator().add_frame({1: A}, {"t": A.astype(float)})


# ------------------------------------------------------------------------------------- video
def test_davis_boundary_map():
    # DAVIS marks a pixel whose right / lower / lower-right neighbour differs, so a square's
    # boundary is the ring one pixel up-left of its outline: 5x5 at rows/cols 5..9 -> ring 4..9
    ring = box(4, 10, 4, 10, 20, 20) & ~box(5, 9, 5, 9, 20, 20)
    np.testing.assert_array_equal(seg2bmap(box(5, 10, 5, 10, 20, 20)), ring)
    # on the last row/column only changes along the edge count: a full mask has no boundary
    assert not seg2bmap(np.ones((3, 3), bool)).any()


def test_j_and_f_on_squares():
    # 20x20 image: diagonal 28.3 px, 0.008 * 28.3 = 0.23 -> tolerance ceil = 1 px (a plus-shaped
    # disk). gt = 5x5 square rows/cols 5..9; pred = the same square shifted right by 3 px.
    g, p = box(5, 10, 5, 10, 20, 20), box(5, 10, 8, 13, 20, 20)
    # J: overlap cols 8..9 = 10 px, union 25 + 25 - 10 = 40
    assert region_similarity(g, p) == pytest.approx(0.25)
    # DAVIS boundaries are the 6x6 rings rows 4..9 x cols 4..9 (gt) and cols 7..12 (pred), 20 px
    # each. Pred ring pixels within 1 px (4-neighbourhood) of the gt ring: top row cols 7..10 (4),
    # bottom row cols 7..10 (4), left column rows 5 and 8 (touch gt rows 4 / 9) (2) = 10 of 20 ->
    # precision 0.5; recall 0.5 by mirror symmetry -> F = 0.5.
    assert boundary_fmeasure(g, p) == pytest.approx(0.5)
    # shifted by one pixel every ring pixel is within tolerance: F = 1 although J = 20/30
    p1 = box(5, 10, 6, 11, 20, 20)
    assert (region_similarity(g, p1), boundary_fmeasure(g, p1)) == pytest.approx((2 / 3, 1.0))
    empty = np.zeros((20, 20), bool)
    assert (region_similarity(empty, empty), boundary_fmeasure(empty, empty)) == (1.0, 1.0)
    assert (region_similarity(g, empty), boundary_fmeasure(g, empty)) == (0.0, 0.0)


def test_video_j_and_f_sequence():
    g = box(5, 10, 5, 10, 20, 20)
    shifted, far = box(5, 10, 8, 13, 20, 20), box(15, 20, 15, 20, 20, 20)
    ev = VideoEvaluator()
    ev.add_frame({1: g}, {"a": shifted})  # J .25, F .5
    ev.add_frame({1: g}, {"a": g, "b": far})  # a: 1, 1 (b: 0, 0)
    ev.add_frame({}, {})  # object and tracks absent: 1, 1
    ev.add_frame({1: g}, {})  # object missed: 0, 0
    s = ev.summarize()
    # track a: J (0.25+1+1+0)/4, F (0.5+1+1+0)/4; b and the empty track only score 0.25 / 0.25
    assert s["per_object"]["1"]["track"] == "a"
    assert s["J"] == pytest.approx(0.5625)
    assert s["F"] == pytest.approx(0.625)
    assert s["J&F"] == pytest.approx(0.59375)
    # per-frame values of the assigned pair, over frames where the object is present
    assert_timeline_agrees_with_trackeval(ev)
    timeline = ev.timeline()
    assert [f["J"] for f in timeline] == pytest.approx([0.25, 1.0, None, 0.0])
    assert [f["F"] for f in timeline] == pytest.approx([0.5, 1.0, None, 0.0])


def test_summarize_sequences():
    g = box(5, 10, 5, 10, 20, 20)
    first = VideoEvaluator()
    first.add_frame({1: g}, {"a": box(5, 10, 8, 13, 20, 20)}, latency_ms=10.0)  # J .25, F .5
    first.add_frame({1: g}, {"a": g}, latency_ms=30.0)  # 1, 1
    second = VideoEvaluator()
    second.add_frame({7: g}, {"x": g}, latency_ms=20.0)  # 1, 1
    s = summarize_sequences({"bag0/i0": first, "bag0/i1": second})
    # DAVIS averages over objects of all sequences: J = (0.625 + 1) / 2, F = (0.75 + 1) / 2
    assert (s["J"], s["F"]) == pytest.approx((0.8125, 0.875))
    assert (s["num_frames"], s["num_gt"], s["matches"], s["id_switches"]) == (3, 3, 2, 0)
    assert s["latency_ms"]["p50"] == pytest.approx(20.0)
    assert set(s["per_sequence"]) == {"bag0/i0", "bag0/i1"}


def test_identity_switches_clear_mot():
    r1, r2 = box(0, 5, 0, 5, 20, 20), box(10, 15, 10, 15, 20, 20)
    ev = VideoEvaluator()
    ev.add_frame({1: r1, 2: r2}, {"a": r1, "b": r2})  # first matches: no switch
    ev.add_frame({1: r1, 2: r2}, {"a": r2, "b": r1})  # tracks swapped: 2 switches
    ev.add_frame({2: r2}, {"a": r2})  # object 1 occluded; 2 keeps a: 0
    ev.add_frame({1: r1, 2: r2}, {"c": r1, "a": r2})  # 1 reappears as c (last was b): 1 switch
    # c still overlaps object 1 with IoU 15/25 = 0.6 >= 0.5, so CLEAR-MOT keeps it although the
    # new track d is exact (plain Hungarian would switch): d is a false positive, no switch
    ev.add_frame({1: r1}, {"c": box(0, 5, 0, 3, 20, 20), "d": r1})
    ev.add_frame({1: r1}, {"c": box(0, 5, 0, 2, 20, 20)})  # IoU 0.4: a miss and a false positive
    s = ev.summarize()
    assert s["id_switches"] == 3
    assert [f["id_switches"] for f in ev.frames] == [0, 2, 0, 1, 0, 0]
    assert (s["num_gt"], s["matches"], s["misses"], s["false_positives"]) == (9, 8, 1, 2)
    assert s["MOTA"] == pytest.approx(1 - (1 + 2 + 3) / 9)
    assert_timeline_agrees_with_trackeval(ev)


def test_tracking_metrics_equal_trackeval_on_a_hand_derived_fixture():
    """An id switch, a miss and a false positive with exact masks (IoU 1 or 0, so HOTA is the same at every alpha):
        frame 0: gt 1 = A, gt 2 = B;  tracks a = A, b = B
        frame 1: gt 1 = A, gt 2 = B;  tracks a = A, c = B      gt 2 switches from b to c
        frame 2: gt 1 = A;            tracks a = A, x = C      x is a false positive
        frame 3: gt 1 = A, gt 2 = B;  track  a = A             gt 2 is missed
    7 gt and 7 track detections; TP 6, FN 1, FP 1, IDSW 1.
    MOTA = 1 - (FN + FP + IDSW) / GT = 1 - 3/7 = 4/7.
    IDF1: the best global id pairing is (1, a) with 4 frames and (2, b) or (2, c) with 1: IDTP 5,
        IDFN = IDFP = 7 - 5 = 2, IDF1 = 2*5 / (2*5 + 2 + 2) = 10/14.
    HOTA: DetA = TP / (TP + FN + FP) = 6/8. AssA = mean over the 6 TPs of TPA / (TPA + FNA + FPA) of their pair:
        (1, a) 4 TPs with 4 / (4 + 0 + 0) = 1; (2, b) and (2, c) 1 TP each with 1 / (1 + 2 + 0) = 1/3,
        AssA = (4 + 2/3) / 6 = 7/9. HOTA = sqrt(DetA * AssA) = sqrt(7/12). LocA = 1 (every match has IoU 1)."""
    a_, b_, c_ = box(0, 5, 0, 5, 20, 20), box(10, 15, 10, 15, 20, 20), box(0, 5, 12, 17, 20, 20)
    ev = VideoEvaluator()
    ev.add_frame({1: a_, 2: b_}, {"a": a_, "b": b_})
    ev.add_frame({1: a_, 2: b_}, {"a": a_, "c": b_})
    ev.add_frame({1: a_}, {"a": a_, "x": c_})
    ev.add_frame({1: a_, 2: b_}, {"a": a_})
    s = ev.summarize()
    assert (s["num_gt"], s["matches"], s["misses"], s["false_positives"], s["id_switches"]) == (7, 6, 1, 1, 1)
    assert s["MOTA"] == pytest.approx(4 / 7)
    assert s["IDF1"] == pytest.approx(10 / 14)
    assert s["DetA"] == pytest.approx(6 / 8) and s["AssA"] == pytest.approx(7 / 9)
    assert s["HOTA"] == pytest.approx(math.sqrt(7 / 12)) and s["LocA"] == pytest.approx(1.0)
    assert_timeline_agrees_with_trackeval(ev)


def assert_timeline_agrees_with_trackeval(ev) -> None:
    """The per-frame switches of the timeline (the package's matcher) add up to TrackEval's IDSW."""
    assert sum(f["id_switches"] for f in ev.frames) == ev.summarize()["id_switches"]


def test_invalid_pairs_do_not_steal_the_assignment():
    def strip(*ranges):  # 1 x 30 masks from column ranges
        m = np.zeros((1, 30), bool)
        for a, b in ranges:
            m[0, a:b] = True
        return m
    g1, g2 = strip((0, 10)), strip((1, 6), (20, 25))
    t1, t2 = strip((0, 6)), strip((7, 10))
    # IoU(g1,t1) = 0.6 is the only valid pair; IoU(g1,t2) = 0.3 and IoU(g2,t1) = 5/11 sum to more,
    # so maximizing raw IoU would pick those two and then discard both as below 0.5
    ev = VideoEvaluator()
    ev.add_frame({1: g1, 2: g2}, {"t1": t1, "t2": t2})
    assert ev.summarize()["matches"] == 1
    assert_timeline_agrees_with_trackeval(ev)


def test_latency_stats():
    ev = VideoEvaluator()
    for ms in range(1, 101):
        ev.add_frame({}, {}, latency_ms=float(ms))
    lat = ev.summarize()["latency_ms"]
    # numpy's linear interpolation on 1..100: p50 = 50.5, p95 = 1 + 0.95 * 99 = 95.05
    assert (lat["n"], lat["p50"], lat["p95"], lat["mean"], lat["max"]) == pytest.approx(
        (100, 50.5, 95.05, 50.5, 100.0))
    assert latency_stats([])["p50"] is None

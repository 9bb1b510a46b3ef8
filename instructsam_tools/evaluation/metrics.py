"""Public metric API (definitions and sources are in the docstrings of the modules below).

    InstanceSetEvaluator  mAP/AP50/AP75 (COCOeval segm), gIoU/cIoU/N-acc/T-acc (GRES),
                          P@0.5/0.7/0.9, mIoU, oIoU (DIT), duplicate rate, per-family breakdown
    VideoEvaluator        DAVIS J&F per object; HOTA (DetA/AssA/LocA), IDF1, MOTA/MOTP/IDSW from TrackEval;
                          latency p50/p95/mean
    summarize_sequences   several VideoEvaluators combined (J&F over all objects; TrackEval's own combination)
"""
from instructsam_tools.evaluation.coco_ap import segm_ap
from instructsam_tools.evaluation.instance_set import InstanceSetEvaluator, count_duplicates, evaluate_sample, summarize_results
from instructsam_tools.evaluation.video import (IdentityMatcher, VideoEvaluator, boundary_fmeasure, latency_stats,
                    region_similarity, seg2bmap, summarize_sequences)

__all__ = ["InstanceSetEvaluator", "VideoEvaluator", "IdentityMatcher", "segm_ap",
           "count_duplicates", "evaluate_sample", "summarize_results", "boundary_fmeasure",
           "region_similarity", "seg2bmap", "latency_stats", "summarize_sequences"]

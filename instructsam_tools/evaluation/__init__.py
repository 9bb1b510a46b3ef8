"""Evaluation: instance-set metrics (instance_set.py, metrics.py), COCO AP (coco_ap.py), video and tracking metrics
(video.py, tracking_metrics.py: TrackEval), the evaluation CLIs (evaluate.py, tracker.py, calibrate.py) and the
report (report.py: JSON, markdown, plots)."""

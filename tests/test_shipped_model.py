"""The shipped checkpoint loads through the same from_pretrained path and reproduces its recorded metrics."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from instructsam.evaluation.evaluate import evaluate_model, load_model
from instructsam.training.data import build_dataset

CHECKPOINT = REPO / "checkpoints" / "instructsam-tiny"
RECORDED = REPO / "docs" / "shipped_model_eval" / "test" / "metrics.json"


def test_shipped_checkpoint_reproduces_the_recorded_test_metrics():
    """README's numbers come from `python -m instructsam.evaluation.evaluate --checkpoint checkpoints/instructsam-tiny
    --data synthetic:test:800`; the same evaluation here must agree within 0.01."""
    recorded = json.loads(RECORDED.read_text())
    torch.set_num_threads(2)
    model = load_model(CHECKPOINT).eval()
    summary, _ = evaluate_model(model, build_dataset("synthetic:test:800"), num_overlays=0)
    assert summary["num_samples"] == recorded["num_samples"] == 800
    for key in ("mAP", "AP50", "gIoU", "cIoU", "N-acc", "T-acc", "mIoU"):
        assert summary[key] == pytest.approx(recorded[key], abs=0.01), key

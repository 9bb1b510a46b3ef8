"""Report writer: JSON round-trip, markdown values, and real PNG plots."""
import json

import numpy as np
from PIL import Image

from instructsam_tools.evaluation.metrics import InstanceSetEvaluator, VideoEvaluator
from instructsam_tools.evaluation.report import OverlayItem, markdown_table, overlay, write_report
from instructsam.outputs import Prediction


def _mask(r0, r1, c0, c1, h=32, w=48):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_write_report(tmp_path):
    ev = InstanceSetEvaluator()
    a, b = _mask(2, 10, 2, 10), _mask(15, 25, 20, 40)
    ev.add("s1", np.stack([a, b]), Prediction(np.stack([a]), np.array([0.9]), np.zeros((1, 4))),
           family="category")
    ev.add("s2", np.zeros((0, 32, 48), bool), Prediction.empty(32, 48), family="no_target")
    summary = ev.summarize()

    video = VideoEvaluator()
    for i in range(5):
        video.add_frame({1: _mask(2, 10, 2 + i, 10 + i)}, {"t0": _mask(2, 10, 2, 10)},
                        latency_ms=10.0 + i)
    image = np.full((32, 48, 3), 90, np.uint8)
    items = [OverlayItem(image, np.stack([a, b]), np.stack([a]), "all the things"),
             OverlayItem(image, np.zeros((0, 32, 48), bool), np.zeros((0, 32, 48), bool), "none")]
    paths = write_report(tmp_path / "out", summary, overlays=items, timeline=video.timeline())

    assert json.loads(paths["json"].read_text()) == summary
    md = paths["markdown"].read_text()
    # s1: I = 64, U = 64 + 200 -> gIoU (64/264 + 1) / 2 = 62.1 %
    assert f"{100 * (64 / 264 + 1) / 2:.1f}" in md and "| no_target | 1 |" in md
    for key in ("per_family", "overlays", "timeline"):
        with Image.open(paths[key]) as im:  # a real, decodable PNG with content
            assert im.format == "PNG" and im.size[0] > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 2

    vmd = markdown_table(video.summarize(), "video")
    assert "J&F" in vmd and "p50 12.0 ms" in vmd


def test_overlay_colours_only_predicted_pixels():
    image = np.zeros((4, 4, 3), np.uint8)
    out = overlay(image, np.stack([_mask(0, 2, 0, 2, 4, 4)]))
    assert out[:2, :2].any() and not out[2:, :].any() and not out[:, 2:].any()

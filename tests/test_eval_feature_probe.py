"""The feature probe (instructsam_tools.evaluation.feature_probe): its linear probe on features that do and do not
carry the label, and a run through every site of a real (small) model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instructsam_tools.evaluation.feature_probe import SITES, linear_probe, main
from training_helpers import build_test_model


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    return build_test_model(tmp_path_factory.mktemp("model") / "tiny")


def test_the_linear_probe_reads_a_label_the_features_carry_and_not_one_they_do_not():
    rng = np.random.default_rng(0)
    labels = [("red", "blue", "green")[i % 3] for i in range(600)]
    signal = np.eye(3)[[("red", "blue", "green").index(v) for v in labels]]
    noise = rng.normal(size=(600, 16))
    train = np.arange(600) < 450
    carried, majority = linear_probe(np.concatenate([signal + 0.1 * noise[:, :3], noise], 1), labels, train)
    assert carried > 0.95 and majority == pytest.approx(1 / 3, abs=0.01)
    absent, _ = linear_probe(noise, labels, train)
    assert absent < 0.5


def test_every_site_is_probed_on_a_real_model(tmp_path, small_model_dir):
    torch.set_num_threads(2)
    out = tmp_path / "probe.json"
    result = main(["--checkpoint", str(small_model_dir), "--scenes", "8", "--device", "cpu", "--out", str(out)])
    assert {"sam3_vit", "detr_input", "detr_output", "vlm_image"} <= set(result) <= set(SITES)  # a random model may match no slot
    for site, by_attribute in result.items():
        assert set(by_attribute) == {"color", "shape"}, site
        for r in by_attribute.values():
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["majority"] <= 1.0 and r["n_test"] > 0
    assert json.loads(out.read_text())["run"]["scenes"] == 8

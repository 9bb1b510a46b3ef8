"""The instruction-sensitivity probe (instructsam_tools.evaluation.probe): its arithmetic on hand-made answers, and on
the shipped checkpoint the recorded figures (docs/shipped_model_eval/probe/) and the training recipe's target."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO
from instructsam_tools.data.synthetic import SyntheticInst2Seg
from instructsam_tools.evaluation.probe import ProbeCounts, covered, instruction_for, probe, score_scene

CHECKPOINT = REPO / "checkpoints" / "instructsam-tiny"
RECORDED = REPO / "docs" / "shipped_model_eval" / "probe" / "probe.json"


def _objects() -> np.ndarray:
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, :4, :4] = masks[1, :4, 4:] = masks[2, 4:, :] = True  # 16, 16 and 32 pixels
    return masks


def test_covered_needs_more_than_half_of_the_object():
    objects = _objects()
    answer = np.zeros((2, 8, 8), dtype=bool)
    answer[0, :4, :2] = True            # exactly half of object 0: not covered
    answer[1, 4:, :5] = True            # 20 of object 2's 32 pixels, split over no other object
    assert covered(objects, answer).tolist() == [False, False, True]
    answer[0, 0, 2] = True              # one more pixel: more than half
    assert covered(objects, answer).tolist() == [True, False, True]
    assert covered(objects, answer[:0]).tolist() == [False, False, False]  # an empty answer covers nothing


def test_a_faithful_answer_scores_own_1_other_0_and_a_salient_one_scores_the_same_for_both():
    objects, values = _objects(), ["red", "blue", "red"]
    faithful, salient = ProbeCounts(), ProbeCounts()
    score_scene(faithful, values, objects, {"red": objects[[0, 2]], "blue": objects[[1]]})
    score_scene(salient, values, objects, {"red": objects, "blue": objects})
    assert faithful.summary() == {"own": 1.0, "other": 0.0, "own_asked": 3, "other_asked": 3, "meets_target": True}
    s = salient.summary()
    assert (s["own"], s["other"], s["meets_target"]) == (1.0, 1.0, False)


def test_the_wording_names_the_attribute():
    assert instruction_for("color", "red") == "all the red objects"
    assert instruction_for("shape", "cross") == "all the crosses"
    assert instruction_for("color", "red", "phrase") == "red object"
    assert instruction_for("shape", "cross", "phrase") == "cross"
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        instruction_for("size", "small")


@pytest.fixture(scope="module")
def shipped_probe():
    from instructsam_tools.evaluation.evaluate import load_model

    torch.set_num_threads(2)
    recorded = json.loads(RECORDED.read_text())
    scenes = recorded["run"]["scenes"]
    dataset = SyntheticInst2Seg(recorded["run"]["split"], size=scenes, seed=recorded["run"]["seed"],
                                instructions_per_image=1)
    return recorded, probe(load_model(CHECKPOINT), dataset, scenes)


def test_the_shipped_checkpoint_reproduces_its_recorded_probe(shipped_probe):
    """docs/shipped_model_eval/probe/probe.json comes from `python -m instructsam_tools.evaluation.probe --checkpoint
    checkpoints/instructsam-tiny --scenes 60 --out docs/shipped_model_eval/probe/probe.json`."""
    recorded, result = shipped_probe
    for attribute in ("color", "shape"):
        for key in ("own_asked", "other_asked"):
            assert result[attribute][key] == recorded[attribute][key] > 0
        for key in ("own", "other"):
            assert result[attribute][key] == pytest.approx(recorded[attribute][key], abs=0.01), (attribute, key)


@pytest.mark.xfail(strict=True, reason="the shipped tiny model does not ground colour or shape yet (the training "
                                       "issue's target); when a shipped model meets it, this passes and the marker goes")
def test_the_shipped_checkpoint_follows_the_attribute_asked(shipped_probe):
    _, result = shipped_probe
    for attribute in ("color", "shape"):
        assert result[attribute]["own"] >= 0.90 and result[attribute]["other"] <= 0.05, (attribute, result[attribute])

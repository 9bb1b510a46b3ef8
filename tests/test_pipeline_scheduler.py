"""Keyframe scheduling rules (instructsam.pipeline.scheduler) and PipelineSettings validation."""
from __future__ import annotations

import pytest

from instructsam.pipeline.frame_pipeline import PipelineSettings
from instructsam.pipeline.instructions import ActiveInstruction
from instructsam.pipeline.scheduler import DetectionParams, KeyframeScheduler, effective_params

A = ActiveInstruction(id="a", text="every red disk")


def run(scheduler: KeyframeScheduler, instruction: ActiveInstruction, settings: PipelineSettings,
        times: list[float]) -> list[str]:
    reasons = []
    for now in times:
        reason = scheduler.decide(instruction, now, settings)
        scheduler.record(instruction, bool(reason), now, settings)
        reasons.append(reason)
    return reasons


def test_every_nth_processed_frame_is_a_keyframe():
    s = KeyframeScheduler()
    reasons = run(s, A, PipelineSettings(keyframe_interval=4), [float(t) for t in range(9)])
    assert reasons == ["first", "", "", "", "interval", "", "", "", "interval"]


@pytest.mark.parametrize("interval", [0, 1])
def test_interval_0_or_1_detects_on_every_frame(interval):
    reasons = run(KeyframeScheduler(), A, PipelineSettings(keyframe_interval=interval), [0.0, 1.0, 2.0])
    assert reasons == ["first", "interval", "interval"]


def test_seconds_rule():
    settings = PipelineSettings(keyframe_interval=100, keyframe_seconds=0.5)
    reasons = run(KeyframeScheduler(), A, settings, [0.0, 0.2, 0.4, 0.5, 0.6, 1.2])
    assert reasons == ["first", "", "", "seconds", "", "seconds"]


def test_new_instruction_is_a_keyframe_at_once_and_overrides_too():
    s = KeyframeScheduler()
    settings = PipelineSettings(keyframe_interval=100)
    run(s, A, settings, [0.0, 1.0])
    b = ActiveInstruction(id="b", text="the blue square")
    assert s.decide(b, 2.0, settings) == "instruction"
    same_text_new_id = ActiveInstruction(id="a2", text=A.text)
    assert s.decide(same_text_new_id, 2.0, settings) == "instruction"
    resent = ActiveInstruction(id="a", text=A.text)  # the same instruction published again: same instance set
    assert s.decide(resent, 2.0, settings) == ""
    stricter = ActiveInstruction(id="a", text=A.text, score_threshold=0.9)
    assert s.decide(stricter, 2.0, settings) == "overrides"
    # the default task is part of an instruction without a task of its own
    assert s.decide(A, 2.0, PipelineSettings(keyframe_interval=100, default_task="reasoning")) == "instruction"
    s.reset()
    assert s.decide(A, 3.0, settings) == "first"


def test_instruction_overrides_apply_to_detection_params():
    settings = PipelineSettings(score_threshold=0.5, max_instances=20, default_task="referring")
    assert effective_params(A, settings) == DetectionParams("referring", 0.5, 20)
    custom = ActiveInstruction(id="c", text="x", task="multi_instance", max_instances=3, score_threshold=0.0)
    p = effective_params(custom, settings)
    assert (p.task, p.score_threshold, p.max_instances) == ("multi_instance", 0.0, 3)


def test_the_default_score_threshold_is_the_checkpoints_own():
    # PipelineSettings' default -1 passes None on, which model.postprocess reads as config.score_threshold
    assert PipelineSettings().score_threshold < 0
    assert effective_params(A, PipelineSettings()).score_threshold is None
    own = ActiveInstruction(id="o", text="x", score_threshold=0.3)
    assert effective_params(own, PipelineSettings()).score_threshold == 0.3


@pytest.mark.parametrize("bad", [dict(score_threshold=1.5), dict(keyframe_interval=-1), dict(max_tracked=0),
                                 dict(default_task="chat"), dict(nms_iou=-0.1), dict(lost_patience=-2)])
def test_settings_reject_bad_values_naming_the_field(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        PipelineSettings(**bad)

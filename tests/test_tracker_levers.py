"""The cost levers on a tracked frame (BENCHMARKS.md section 10) on the shipped tiny checkpoint: the tracker at a
smaller token grid than the detector (tracker_scale) and a smaller memory bank (tracker_memory_frames). Each changes
what a tracked frame computes and nothing a keyframe's detector computes, and still tracks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REPO
from instructsam.errors import InstructSAMInputError
from instructsam.pipeline.frame_pipeline import FramePipeline, PipelineSettings
from instructsam.pipeline.tracker_session import set_memory_frames
from instructsam_tools.data.batching import build_dataset
from instructsam_tools.evaluation.tracker import evaluate_tracker

CHECKPOINT = REPO / "checkpoints" / "instructsam-tiny"


@pytest.fixture(scope="module")
def model():
    from instructsam.loading import load_model

    return load_model(CHECKPOINT)


@pytest.fixture(scope="module")
def videos():
    return build_dataset("synthetic_video:test:8", clip_frames=12)


@pytest.fixture(autouse=True)
def own_levers(model):
    yield
    model.set_tracker_scale(1.0)
    set_memory_frames(model, 0)


def tracker_sizes(model) -> tuple:
    t = model.tracker
    return (t.image_size, t.backbone_feature_sizes, t.prompt_encoder.image_embedding_size,
            t.prompt_encoder.mask_input_size, t.memory_attention.position_ids.shape)


def test_tracker_scale_encodes_a_smaller_grid_and_leaves_the_detector_as_it_was(model, videos):
    image = videos[0].frames[0]
    with torch.no_grad():
        own = model.encode_image(image)
        own_scores = model.segment(own, ["all the objects"]).scores
        own_sizes = tracker_sizes(model)
        assert model.set_tracker_scale(0.75) == model.tracker_input_size == 84  # 8 x 8 tokens of 14 px -> 6 x 6
        key = model.encode_image(image)
        assert torch.equal(key.sam3.last_hidden_state, own.sam3.last_hidden_state)
        assert torch.equal(model.segment(key, ["all the objects"]).scores, own_scores)
        assert key.tracker_vision.last_hidden_state.shape[1] == 6 * 6
        tracked = model.encode_image([image, image], vlm=False).image(1)  # a batched tracked frame, sliced
        assert tracked.sam3.last_hidden_state is None  # the full-size ViT does not run on a tracked frame
        levels = [f.shape[0] for f in model.tracker_features(tracked)["vision_feats"]]
        assert levels == [24 * 24, 12 * 12, 6 * 6]  # the tracker's neck: 4x, 2x and 1x the token grid
    assert tracker_sizes(model) == own_sizes  # the swap holds only while the tracker runs
    model.set_tracker_scale(1.0)
    with pytest.raises(InstructSAMInputError, match="encode the frame again"):
        model.tracker_features(tracked)  # encoded at the smaller grid, read at the full one
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="tracker scale"):
            model.set_tracker_scale(bad)


def test_a_scale_set_while_the_tracker_runs_at_another_is_the_same_scale(model):
    """The node sets tracker_scale from its parameter thread while the worker may be inside the tracker with its
    sizes swapped: the new resolution must not be derived from the swapped sizes."""
    own_sizes = tracker_sizes(model)
    model.set_tracker_scale(0.5)
    with model._tracker_grid():  # the worker, mid-tracker, at 4 x 4 tokens
        assert model.set_tracker_scale(0.75) == 84
        assert model.set_tracker_scale(1.0) == 112
    assert tracker_sizes(model) == own_sizes
    model.set_tracker_scale(0.75)
    with model._tracker_grid():
        assert tracker_sizes(model)[2] == (6, 6)


def test_each_lever_still_tracks_and_the_smaller_grid_costs_quality(model, videos):
    own = evaluate_tracker(model, videos, progress=False)["J&F"]
    model.set_tracker_scale(0.75)
    smaller = evaluate_tracker(model, videos, progress=False)["J&F"]
    model.set_tracker_scale(0.5)
    smallest = evaluate_tracker(model, videos, progress=False)["J&F"]
    model.set_tracker_scale(1.0)
    assert set_memory_frames(model, 2) == model.tracker.num_maskmem == 2
    fewer_memories = evaluate_tracker(model, videos, progress=False)["J&F"]
    assert own > 0.45 and fewer_memories > 0.45  # measured 0.54 and 0.56 on 16 test videos
    assert smaller > 0.35  # 0.48: the 6 x 6 grid still follows the objects
    assert smallest < smaller < own  # and each step down in resolution costs quality


def test_changing_the_tracker_scale_restarts_each_cameras_tracking_on_a_keyframe(model, videos):
    pipeline = FramePipeline(model, ["a", "b"], PipelineSettings(keyframe_interval=3, score_threshold=0.1))
    for camera in ("a", "b"):
        pipeline.instructions.set("all the objects", camera)
    frames, seen = videos[0].frames, []
    for t in range(8):
        if t == 4:
            pipeline.update_settings(tracker_scale=0.75)
        for camera in ("a", "b"):
            pipeline.submit(camera, frames[t])
        results, failures = pipeline.step_batch()
        assert not failures
        seen.append({r.camera: r for r in results})
    assert seen[4]["a"].keyframe_reason == seen[4]["b"].keyframe_reason == "first"
    before = {i.id for i in seen[3]["a"].instances}
    after = {i.id for i in seen[5]["a"].instances}
    assert before and after and not before & after  # a new instance set, tracked at the new size
    assert not seen[5]["a"].keyframe and model.tracker_input_size == 84
    with pytest.raises(ValueError, match="tracker_scale"):
        PipelineSettings(tracker_scale=0.0)


def noisy(frame, rng, sigma: float = 2.0):
    return np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)


def test_an_unchanged_frame_repeats_the_last_instances_without_model_work(model, videos):
    rng = np.random.default_rng(0)
    first, moved = videos[0].frames[0], videos[0].frames[4]
    frames = [first] + [noisy(first, rng) for _ in range(5)] + [moved]
    encoded = []
    encode = model.encode_image
    model.encode_image = lambda *a, **k: (encoded.append(k.get("vlm", True)), encode(*a, **k))[1]
    try:
        runs = {}
        for threshold in (0.0, 4.0):
            pipeline = FramePipeline(model, ["cam"], PipelineSettings(keyframe_interval=5, score_threshold=0.1,
                                                                      skip_unchanged=threshold))
            pipeline.instructions.set("all the objects", "cam")
            encoded.clear()
            results = []
            for frame in frames:
                pipeline.submit("cam", frame)
                results.append(pipeline.step("cam"))
            runs[threshold] = (results, list(encoded), pipeline.stats("cam"))
    finally:
        del model.encode_image
    results, encodes, stats = runs[4.0]
    assert results[0].instances and [r.unchanged for r in results] == [False, True, True, True, True, False, False]
    assert [r.keyframe for r in results] == [True, False, False, False, False, True, False]  # keyframes on schedule
    assert encodes == [True, True, False] and stats["unchanged"] == 4  # no model work on the four unchanged frames
    for r in results[1:5]:
        assert [(i.id, i.state) for i in r.instances] == [(i.id, "tracked") for i in results[0].instances]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(r.instances, results[0].instances))
    off_results, off_encodes, off_stats = runs[0.0]
    assert not any(r.unchanged for r in off_results) and len(off_encodes) == len(frames) and not off_stats["unchanged"]
    with pytest.raises(ValueError, match="skip_unchanged"):
        PipelineSettings(skip_unchanged=-1.0)

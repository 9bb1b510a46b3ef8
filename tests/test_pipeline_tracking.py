"""Tracking state (instructsam.pipeline.tracker_session): id association on constructed masks, and SAM3's real tracker
session with pruning (bounded memory without changing what it computes) and object removal."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import random_images
from pipeline_helpers import load_seeing_tiny

from instructsam.pipeline.tracker_session import (
    LOST, NEW, TRACKED, CameraTracker, Observation, TrackerSession, TrackSet, mask_box, mask_iou, mask_nms,
)

H, W = 60, 80
PATIENCE = 3


def square(x: int, y: int, size: int = 12) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[max(y, 0):max(y + size, 0), max(x, 0):max(x + size, 0)] = True
    return m


def detect(masks: list[np.ndarray], scores: list[float] | None = None):
    """Detections as the model's postprocess returns them (masks, scores, boxes)."""
    stack = np.stack(masks) if masks else np.zeros((0, H, W), dtype=bool)
    scores = np.array(scores if scores is not None else [0.9] * len(masks), dtype=np.float32)
    boxes = np.stack([mask_box(m) for m in masks]) if masks else np.zeros((0, 4), dtype=np.float32)
    return stack, scores, boxes


def keyframe(tracks: TrackSet, masks, scores=None, observations=None, max_tracked=20):
    return tracks.keyframe(*detect(masks, scores), observations or {}, match_iou=0.3, max_tracked=max_tracked,
                           lost_patience=PATIENCE)


def ids_by_state(tracks: TrackSet) -> dict[str, str]:
    return {t.id: t.state for t in tracks.tracks}


def test_mask_iou_and_nms():
    a, b, c = square(0, 0), square(6, 0), square(40, 30)
    iou = mask_iou(np.stack([a, b]), np.stack([a, b, c, np.zeros((H, W), bool)]))
    assert iou[0, 0] == 1.0 and iou[0, 2] == 0.0 and iou[0, 3] == 0.0
    assert iou[0, 1] == pytest.approx(72 / 216)
    masks = np.stack([a, square(1, 0), c])
    assert mask_nms(masks, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]  # a duplicates the higher one
    assert mask_nms(masks, np.array([0.5, 0.9, 0.7]), 1.0).tolist() == [1, 2, 0]  # off: only sorted
    assert mask_box(square(5, 7)).tolist() == [5, 7, 17, 19]


def test_moving_squares_keep_their_ids_and_a_newcomer_gets_a_new_one():
    tracks = TrackSet()
    rng = np.random.default_rng(0)
    history: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for t in range(30):
        objects = {0: square(2 + 2 * t, 5), 1: square(70 - 2 * t, 30), 2: square(30, 2 + t)}
        if t >= 10:
            objects[3] = square(10, 45)  # appears at t = 10
        order = rng.permutation(list(objects))  # detections come in any order
        keyframe(tracks, [objects[k] for k in order])
        for k, m in objects.items():
            (track,) = [tr for tr in tracks.tracks if np.array_equal(tr.mask, m)]
            history.setdefault(k, set()).add(track.id)
            assert track.state == (NEW if (t == 0 or (k == 3 and t == 10)) else TRACKED)
    assert [len(history[k]) for k in range(4)] == [1, 1, 1, 1]  # one id per object over all 30 frames
    assert sorted(next(iter(history[k])) for k in range(4)) == ["1", "2", "3", "4"]


def test_lost_track_keeps_its_id_for_patience_frames_then_is_dropped_and_ids_are_never_reused():
    tracks = TrackSet()
    a, b = square(10, 10), square(50, 30)
    keyframe(tracks, [a, b])
    assert ids_by_state(tracks) == {"1": NEW, "2": NEW}
    for _ in range(PATIENCE):  # b missing: lost, id kept
        keyframe(tracks, [a])
        assert ids_by_state(tracks) == {"1": TRACKED, "2": LOST}
    keyframe(tracks, [a, b])  # back within patience: same id
    assert ids_by_state(tracks) == {"1": TRACKED, "2": TRACKED}
    for _ in range(PATIENCE):
        keyframe(tracks, [a])
    _, _, dropped = keyframe(tracks, [a])  # patience + 1 frames lost: dropped
    assert dropped == [2] and ids_by_state(tracks) == {"1": TRACKED}
    keyframe(tracks, [a, b])  # b again, after its id retired: a new id
    assert ids_by_state(tracks) == {"1": TRACKED, "3": NEW}
    tracks.clear()  # a new instruction: ids go on counting
    keyframe(tracks, [b])
    assert ids_by_state(tracks) == {"4": NEW}


def test_lost_patience_zero_drops_at_once():
    tracks = TrackSet()
    tracks.keyframe(*detect([square(0, 0)]), {}, match_iou=0.3, max_tracked=5, lost_patience=0)
    _, _, dropped = tracks.keyframe(*detect([]), {}, match_iou=0.3, max_tracked=5, lost_patience=0)
    assert dropped == [1] and len(tracks) == 0


def test_association_uses_the_trackers_prediction_for_fast_motion():
    """The detection does not overlap the last seen mask at all, but the tracker followed the object there."""
    tracks = TrackSet()
    keyframe(tracks, [square(0, 0)])
    far = square(40, 40)
    keyframe(tracks, [far], observations={1: Observation(mask=far, presence=0.9)})
    assert ids_by_state(tracks) == {"1": TRACKED}
    keyframe(tracks, [square(0, 0)])  # no tracker view: compared by the last seen mask (far away): new id
    assert ids_by_state(tracks) == {"1": LOST, "2": NEW}


def test_a_lost_track_whose_tracker_drifted_onto_a_followed_object_cannot_take_its_id():
    """Track 2 is lost and its tracker has drifted onto object 1, matching the detection better (IoU 1) than track 1
    does (0.71): track 1, seen until now, is matched first and keeps its id; track 2 stays lost (its own object may
    come back within lost_patience)."""
    tracks = TrackSet()
    keyframe(tracks, [square(0, 0), square(40, 40)])
    keyframe(tracks, [square(2, 0)], observations={1: Observation(square(2, 0), 0.9)})
    assert ids_by_state(tracks) == {"1": TRACKED, "2": LOST}
    drifted = {1: Observation(square(8, 0), 0.9), 2: Observation(square(4, 0), 0.9)}
    for _ in range(PATIENCE - 1):  # on every later keyframe too
        conditioned, new, dropped = keyframe(tracks, [square(4, 0)], observations=drifted)
        assert [t.id for t in conditioned] == ["1"] and new == [] and dropped == []
        assert ids_by_state(tracks) == {"1": TRACKED, "2": LOST}
    conditioned, _, dropped = keyframe(tracks, [square(4, 0)], observations=drifted)
    assert [t.id for t in conditioned] == ["1"] and dropped == [2]  # lost longer than lost_patience: dropped


def test_observe_between_keyframes_visibility_scores_and_nms():
    tracks = TrackSet()
    keyframe(tracks, [square(0, 0), square(40, 20), square(60, 40)], scores=[0.9, 0.8, 0.6])
    moved = square(3, 0)
    dropped = tracks.observe({1: Observation(moved, 0.5 + 0.4), 2: Observation(square(40, 20), 0.2),
                              3: Observation(square(4, 0), 0.99)}, nms_iou=0.5, lost_patience=PATIENCE)
    assert dropped == []
    states = ids_by_state(tracks)
    # 1 moved with the tracker; 2: the tracker's presence is below 0.5; 3 drifted onto 1 and lost the NMS
    assert states == {"1": TRACKED, "2": LOST, "3": LOST}
    t1 = tracks.tracks[0]
    assert np.array_equal(t1.mask, moved) and t1.box.tolist() == [3, 0, 15, 12]
    assert t1.score == pytest.approx(0.9 * 0.9)  # detection score x tracker presence
    tracks.observe({1: Observation(moved, 0.9), 2: Observation(square(40, 20), 0.9)}, 0.5, PATIENCE)
    assert ids_by_state(tracks) == {"1": TRACKED, "2": TRACKED, "3": LOST}  # seen again: tracked


def test_unconfirmed_track_stays_lost_until_a_keyframe_detects_it():
    tracks = TrackSet()
    a = square(10, 10)
    keyframe(tracks, [a])
    keyframe(tracks, [])  # the detector no longer reports it (e.g. it stopped matching the instruction)
    tracks.observe({1: Observation(a, 0.99)}, 0.5, PATIENCE)  # the tracker still sees it
    assert ids_by_state(tracks) == {"1": LOST}
    keyframe(tracks, [a], observations={1: Observation(a, 0.99)})
    assert ids_by_state(tracks) == {"1": TRACKED}


def test_max_tracked_caps_new_tracks_keeping_the_best_scores():
    tracks = TrackSet()
    keyframe(tracks, [square(0, 0), square(20, 0), square(40, 0)], scores=[0.3, 0.9, 0.6], max_tracked=2)
    assert sorted(t.det_score for t in tracks.tracks) == pytest.approx([0.6, 0.9])


# ---- SAM3's tracker ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return load_seeing_tiny()


class UnprunedSession(TrackerSession):
    """The same session without pruning: the reference for what the tracker computes."""

    def _prune(self) -> None:
        pass


def run_session(session: TrackerSession, features: list, cond: dict[int, dict[int, np.ndarray]],
                remove: dict[int, list[int]] | None = None) -> list[dict[int, Observation]]:
    outs = []
    for t, f in enumerate(features):
        obs = session.predict(f, mask_threshold=0.5)
        if t in cond or (remove and t in remove):
            session.condition(cond.get(t, {}), (remove or {}).get(t, []))
        outs.append(obs)
    return outs


def test_pruned_session_computes_the_same_and_stays_bounded(model):
    frames = random_images(24, sizes=((H, W),), seed=1)
    with torch.no_grad():
        features = [model.encode_image(f) for f in frames]
    # conditioning every 5 frames: more conditioning frames than the 4 SAM3 selects would be kept unpruned
    cond = {t: {1: square(5 + t, 10), 2: square(50, 30 - t)} for t in range(0, 24, 5)}
    pruned, reference = TrackerSession(model, H, W), UnprunedSession(model, H, W)
    sizes = []
    for t, f in enumerate(features):
        a, b = pruned.predict(f, 0.5), reference.predict(f, 0.5)
        assert a.keys() == b.keys() == ({1, 2} if t else set())
        if 0 < t <= 20:  # from frame 21 the unpruned session also reads the pointers of a 5th conditioning frame
            ids, masks, scores = pruned.last_output
            assert ids == reference.last_output[0] == [1, 2]
            assert torch.equal(masks, reference.last_output[1]) and torch.equal(scores, reference.last_output[2])
            assert masks.std() > 0 and (scores > 0).all()  # real mask logits, objects visible: not a constant
        if t in cond:
            pruned.condition(cond[t], [])
            reference.condition(cond[t], [])
        sizes.append(pruned.stored_frames())
    assert max(sizes) <= pruned.max_frames() < reference.stored_frames()
    assert reference.stored_frames() == 24
    s = pruned.session
    for idx in s.output_dict_per_obj:
        assert len(s.output_dict_per_obj[idx]["cond_frame_outputs"]) <= pruned.max_cond_frames
        assert len(s.output_dict_per_obj[idx]["non_cond_frame_outputs"]) <= pruned.window + 1
        for frame_idx, out in s.output_dict_per_obj[idx]["non_cond_frame_outputs"].items():
            if frame_idx != pruned.frame_idx:
                assert "high_res_masks" not in out and "pred_masks" not in out


def test_removing_an_object_leaves_the_others_as_if_it_never_was(model):
    frames = random_images(4, sizes=((H, W),), seed=4)
    with torch.no_grad():
        features = [model.encode_image(f) for f in frames]
    a, b, c = square(5, 5), square(30, 20), square(55, 40)
    three, two = TrackerSession(model, H, W), TrackerSession(model, H, W)
    run_session(three, features[:2], {0: {1: a, 2: b, 3: c}}, remove={1: [2]})
    run_session(two, features[:2], {0: {1: a, 3: c}})
    three.predict(features[2], 0.5)
    two.predict(features[2], 0.5)
    assert three.last_output[0] == two.last_output[0] == [1, 3]
    torch.testing.assert_close(three.last_output[1], two.last_output[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(three.last_output[2], two.last_output[2], atol=1e-6, rtol=0)


def test_camera_tracker_keyframe_conditions_sam3_on_the_detections(model):
    """On a keyframe the tracks take the detected masks, and SAM3's tracker holds exactly those objects."""
    from instructsam.outputs import Prediction

    frames = random_images(3, sizes=((H, W),), seed=3)
    tracker = CameraTracker()
    kw = dict(mask_threshold=0.5, match_iou=0.3, nms_iou=0.5, max_tracked=20, lost_patience=PATIENCE)
    with torch.no_grad():
        f0 = model.encode_image(frames[0])
        masks, scores, boxes = detect([square(5, 5), square(40, 30), square(6, 5)], [0.9, 0.8, 0.5])
        tracks = tracker.keyframe(model, f0, Prediction(masks, scores, boxes), **kw)
        assert [(t.id, t.state) for t in tracks] == [("1", NEW), ("2", NEW)]  # the third duplicates the first
        assert np.array_equal(tracks[0].mask, masks[0]) and tracker.session.object_ids == [1, 2]
        tracks = tracker.track(model, model.encode_image(frames[1]), mask_threshold=0.5, nms_iou=1.0,
                               lost_patience=PATIENCE)
        assert [(t.id, t.state) for t in tracks] == [("1", TRACKED), ("2", TRACKED)]
        assert tracks[0].score == pytest.approx(0.9 * float(torch.sigmoid(tracker.session.last_output[2][0])))
        tracker.reset()
        assert tracker.session is None and tracker.stored_frames() == 0
        tracks = tracker.keyframe(model, model.encode_image(frames[2]), Prediction(masks[:1], scores[:1],
                                                                                 boxes[:1]), **kw)
        assert [(t.id, t.state) for t in tracks] == [("3", NEW)]  # ids are not reused after a reset

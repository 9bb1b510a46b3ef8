"""Per-camera tracking state: stable instance ids across frames (no ROS, no threads).

Four pieces, smallest first:
    mask_iou / mask_nms    pairwise mask IoU and greedy mask-IoU NMS on (N, H, W) bool masks
    TrackSet               the id bookkeeping: associate keyframe detections with tracks (Hungarian on mask IoU),
                           new / tracked / lost states, lost patience, ids never reused. Pure numpy, so it is
                           tested on constructed masks.
    TrackerSession         SAM3's streaming tracker (`Sam3TrackerVideoInferenceSession`) on features the frame's
                           `encode_image` already computed, with the session pruned so memory stays bounded.
    CameraTracker          TrackSet + TrackerSession for one camera: `keyframe(...)` and `track(...)`.

The model stays stateless (SAM2 style); this module owns the state, one CameraTracker per camera.

Scores: on a keyframe an instance's score is its detection score. On a tracked frame it is the detection score of
the track's last keyframe match times the tracker's object-presence probability sigmoid(object_score_logit) on
this frame (so it falls when SAM3's tracker loses confidence that the object is visible). A lost instance keeps
its last score, an empty mask and its last box.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from instructsam.pipeline.model_interface import PipelineModel

NEW, TRACKED, LOST = "new", "tracked", "lost"


# ---- masks ------------------------------------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W) x (M, H, W) bool -> (N, M) IoU (0 where both masks are empty)."""
    a2 = a.reshape(len(a), -1).astype(np.float32)
    b2 = b.reshape(len(b), -1).astype(np.float32)
    inter = a2 @ b2.T
    union = a2.sum(1)[:, None] + b2.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0).astype(np.float32)


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on masks: indices kept, highest score first; a mask overlapping a kept higher-scoring one with IoU
    > iou_threshold is dropped. iou_threshold >= 1 keeps everything (sorted). Box NMS (torchvision) has already run in
    the model's postprocess; this catches masks that overlap although their boxes do not, and vice versa."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if iou_threshold >= 1.0 or len(order) < 2:
        return order
    ious = mask_iou(masks[order], masks[order])
    keep: list[int] = []
    for i in range(len(order)):
        if all(ious[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return order[keep]


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box of a bool mask (x2, y2 exclusive, like the dataset's boxes); zeros if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


# ---- ids --------------------------------------------------------------------------------------------------------
@dataclass
class Track:
    """One instance being followed. `key` is its integer id (the SAM3 tracker's object id); `id` is str(key)."""

    key: int
    mask: np.ndarray  # (H, W) bool: on this frame if visible, else the last one seen
    box: np.ndarray  # (4,) xyxy px
    score: float  # reported score (see module docstring)
    det_score: float  # detection score of the last keyframe match
    state: str = NEW
    lost_frames: int = 0  # consecutive processed frames in state "lost"
    confirmed: bool = True  # False after a keyframe whose detections did not include it: lost until one does

    @property
    def id(self) -> str:
        return str(self.key)


@dataclass
class Observation:
    """The tracker's view of a track on one frame."""

    mask: np.ndarray  # (H, W) bool
    presence: float  # sigmoid(object_score_logit)

    @property
    def visible(self) -> bool:
        return self.presence > 0.5 and bool(self.mask.any())


class TrackSet:
    """Track ids for one camera and one instruction's instance set.

    keyframe(): detections are matched to tracks by mask IoU with Hungarian assignment (scipy), tracks not lost
        first and lost ones to the detections left; a pair counts when its IoU >= match_iou, the IoU of a track
        being the higher of its tracker-predicted mask on this frame and its last seen mask. Matched -> keeps its
        id, state "tracked", mask/score from the detection. Unmatched detection -> a new id, state "new" (up to
        max_tracked tracks). Unmatched track -> "lost" and unconfirmed.
    observe(): between keyframes the tracker's masks move the tracks; a track the tracker no longer sees (presence
        <= 0.5 or empty mask), or one suppressed by mask NMS, is "lost"; seen again while confirmed -> "tracked".
    A track lost for more than lost_patience consecutive processed frames is dropped. Ids are "1", "2", ... per
    camera and never reused, not even after clear() (a new instruction).
    """

    def __init__(self, first_id: int = 1):
        self.tracks: list[Track] = []
        self._ids = itertools.count(first_id)

    def __len__(self) -> int:
        return len(self.tracks)

    def clear(self) -> list[int]:
        """Forget every track (ids are not reused); returns the keys removed."""
        removed = [t.key for t in self.tracks]
        self.tracks = []
        return removed

    def keyframe(self, det_masks: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
                 observations: dict[int, Observation], match_iou: float, max_tracked: int,
                 lost_patience: int) -> tuple[list[Track], list[Track], list[int]]:
        """Associate detections (sorted or not) with the tracks.

        observations: the tracker's prediction for (some) tracks on this frame (may be empty: then tracks are
            compared by their last seen masks only).
        Returns (conditioned, new, dropped): the tracks whose mask now comes from a detection (matched + new; the
            tracker is to be re-conditioned on them), the new ones, and the dropped keys.
        """
        det_scores = np.asarray(det_scores, dtype=np.float32).reshape(-1)
        order = np.argsort(-det_scores, kind="stable")
        det_masks, det_scores, det_boxes = det_masks[order], det_scores[order], np.asarray(det_boxes)[order]
        matched_det: dict[int, Track] = {}
        if len(self.tracks) and len(det_masks):
            # IoU with where the tracker puts the track on this frame, or with where it was seen last, whichever is
            # higher: the tracker follows fast motion; the last mask still works when the tracker lost the object
            iou = mask_iou(det_masks, np.stack([t.mask for t in self.tracks]))
            seen = [j for j, t in enumerate(self.tracks) if t.key in observations and observations[t.key].mask.any()]
            if seen:
                predicted = np.stack([observations[self.tracks[j].key].mask for j in seen])
                iou[:, seen] = np.maximum(iou[:, seen], mask_iou(det_masks, predicted))
            # tracks seen until now are matched first, lost ones to what is left (DeepSORT's matching cascade): a
            # lost track whose tracker drifted onto an object another track follows cannot take that object's id
            # (without it, such a pair traded one object's id back and forth from keyframe to keyframe)
            for group in ([j for j, t in enumerate(self.tracks) if t.state != LOST],
                          [j for j, t in enumerate(self.tracks) if t.state == LOST]):
                free = [d for d in range(len(det_masks)) if d not in matched_det]
                if not group or not free:
                    continue
                sub = iou[np.ix_(free, group)]
                for r, c in zip(*linear_sum_assignment(sub, maximize=True)):
                    if sub[r, c] >= match_iou:
                        matched_det[free[r]] = self.tracks[group[c]]
        conditioned, new = [], []
        for d in range(len(det_masks)):
            track = matched_det.get(d)
            if track is None:
                if len(self.tracks) + len(new) >= max_tracked:
                    continue
                track = Track(key=next(self._ids), mask=det_masks[d].copy(), box=np.array(det_boxes[d], np.float32),
                              score=float(det_scores[d]), det_score=float(det_scores[d]), state=NEW)
                new.append(track)
            else:
                track.mask, track.box = det_masks[d].copy(), np.array(det_boxes[d], np.float32)
                track.score = track.det_score = float(det_scores[d])
                track.state, track.lost_frames, track.confirmed = TRACKED, 0, True
            conditioned.append(track)
        kept = set(id(t) for t in matched_det.values())
        for track in self.tracks:
            if id(track) not in kept:
                track.confirmed = False
                self._lose(track)
        self.tracks.extend(new)
        return conditioned, new, self._drop_expired(lost_patience)

    def observe(self, observations: dict[int, Observation], nms_iou: float,
                lost_patience: int) -> list[int]:
        """Move the tracks with the tracker's observations of this frame; returns the dropped keys."""
        visible = [t for t in self.tracks if t.confirmed and t.key in observations and observations[t.key].visible]
        if visible:
            keep = mask_nms(np.stack([observations[t.key].mask for t in visible]),
                            np.array([t.det_score * observations[t.key].presence for t in visible]), nms_iou)
            visible = [visible[i] for i in keep]
        shown = set(id(t) for t in visible)
        for track in self.tracks:
            if id(track) in shown:
                obs = observations[track.key]
                track.mask, track.box = obs.mask.copy(), mask_box(obs.mask)  # a copy: not a view of all masks
                track.score = track.det_score * obs.presence
                track.state, track.lost_frames = TRACKED, 0
            else:
                self._lose(track)
        return self._drop_expired(lost_patience)

    @staticmethod
    def _lose(track: Track) -> None:
        track.state = LOST
        track.lost_frames += 1

    def _drop_expired(self, lost_patience: int) -> list[int]:
        dropped = [t.key for t in self.tracks if t.state == LOST and t.lost_frames > lost_patience]
        if dropped:
            self.tracks = [t for t in self.tracks if t.key not in dropped]
        return dropped


# ---- SAM3's tracker ----------------------------------------------------------------------------------------------
def mask_prompt(mask, image_size: int, device) -> torch.Tensor:
    """An (H, W) bool mask at image resolution as SAM3's tracker mask prompt: (1, 1, S, S) float {0, 1} at the
    tracker's square input size."""
    square = F.interpolate(torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None],
                           size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (square > 0.5).to(torch.float32)


def set_memory_frames(model, frames: int) -> int:
    """How many past frames SAM3's tracker reads through memory attention (its memory bank, a cost lever: memory
    attention runs over every kept frame's features once per object). 0 = the checkpoint's own num_maskmem (7 in
    facebook/sam3); more than that is capped at it. Conditioning frames (keyframes) are read as well. Returns the
    value in effect. Model-wide: every camera's tracker reads the same number."""
    own = int(model.tracker.config.num_maskmem)
    if frames < 0:
        raise ValueError(f"memory frames must be >= 0 (0: the checkpoint's {own}), got {frames}")
    model.tracker.num_maskmem = own if frames == 0 else min(frames, own)
    return model.tracker.num_maskmem


def new_streaming_session(model, height: int, width: int):
    """An empty `Sam3TrackerVideoInferenceSession` for height x width frames, all on the model's device: what the
    pipeline's TrackerSession wraps and what tracker training runs through."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )

    device = model.device
    return Sam3TrackerVideoInferenceSession(
        video_height=height, video_width=width, inference_device=device, inference_state_device=device,
        video_storage_device=device, dtype=model.tracker.dtype)


class TrackerSession:
    """SAM3's streaming video tracker on cached frame features, with bounded memory.

    What a `Sam3TrackerVideoInferenceSession` keeps (transformers 5.23), and the cap applied after every step:
      processed_frames        one entry per registered frame, forever          -> only the current frame
      cache (vision features) max_vision_features_cache_size (1)              -> unchanged (bounded)
      output_dict_per_obj     every frame's outputs per object, forever: low-res and image-size mask logits,
                              object pointer, memory features (the memory bank)
                                  non-conditioning frames -> the last `window` frames, mask logits stripped
                                  conditioning frames     -> the newest max_cond_frame_num (4), mask logits stripped
      frames_tracked_per_obj  one entry per frame per object                   -> current frame only
      mask/point_inputs       per conditioning frame                           -> dropped once consumed
    window = max(num_maskmem - 1, max_object_pointers_in_encoder - 1) frames back (6 and 15 in SAM3's config): the
    frames the tracker's memory attention and object pointers can still read in streaming mode, so pruning changes
    nothing it computes, except that only the newest conditioning frames (those it would select) are kept, whose
    object pointers it would otherwise all read.
    """

    KEEP_KEYS = ("maskmem_features", "maskmem_pos_enc", "object_pointer", "object_score_logits")

    def __init__(self, model: PipelineModel, height: int, width: int):
        self.model = model
        tracker = model.tracker
        self.height, self.width = height, width
        self.image_size = int(model.tracker_input_size)  # the tracker's input: mask prompts are given at this size
        cfg = tracker.config
        self.window = max(int(cfg.num_maskmem) - 1, int(cfg.max_object_pointers_in_encoder) - 1, 1)
        self.max_cond_frames = int(cfg.max_cond_frame_num) if int(cfg.max_cond_frame_num) > 0 else 4
        self.session = new_streaming_session(model, height, width)
        self.frame_idx = -1  # index of the current (last registered) frame
        self.last_output: tuple | None = None

    # -- bookkeeping --
    @property
    def object_ids(self) -> list[int]:
        return list(self.session.obj_ids)

    def stored_frames(self) -> int:
        """The most frames the session holds anything for, per object (the quantity pruning bounds; the objects
        are at most max_tracked)."""
        s = self.session
        cached = range(self.frame_idx - s.cache.max_vision_features_cache_size + 1, self.frame_idx + 1)
        shared = set(s.processed_frames or {}) | {f for f in cached if s.cache.get_vision_features(f) is not None}
        most = len(shared)
        for idx in s.output_dict_per_obj:
            frames = shared | set(s.output_dict_per_obj[idx]["cond_frame_outputs"])
            frames |= set(s.output_dict_per_obj[idx]["non_cond_frame_outputs"])
            frames |= set(s.frames_tracked_per_obj[idx]) | set(s.mask_inputs_per_obj[idx])
            frames |= set(s.point_inputs_per_obj[idx])
            most = max(most, len(frames))
        return most

    def max_frames(self) -> int:
        """The cap on stored_frames(): the memory window and the current frame, plus the kept conditioning frames."""
        return self.window + 1 + self.max_cond_frames

    # -- steps --
    def _register(self, features, index: int) -> None:
        self.frame_idx += 1
        self.session.cache.cache_vision_features(self.frame_idx, self.model.tracker_features(features, index))

    def _run(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        out = self.model.run_tracker(self.session, self.frame_idx)  # also when re-running a frame (condition)
        return list(out.object_ids), out.pred_masks, out.object_score_logits.reshape(-1)

    def _observations(self, ids, low_res, logits, mask_threshold: float) -> dict[int, Observation]:
        if not ids:
            return {}
        probs = F.interpolate(low_res.float(), size=(self.height, self.width), mode="bilinear",
                              align_corners=False)[:, 0].sigmoid()
        masks = (probs > mask_threshold).cpu().numpy()
        presence = logits.float().sigmoid().cpu().numpy()
        return {int(k): Observation(mask=masks[i], presence=float(presence[i])) for i, k in enumerate(ids)}

    @torch.no_grad()
    def predict(self, features, mask_threshold: float, index: int = 0) -> dict[int, Observation]:
        """Register the frame and propagate every object to it (nothing if no object is tracked)."""
        self._register(features, index)
        self.last_output = None
        if not self.session.obj_ids:
            self._prune()
            return {}
        self.last_output = self._run()  # (object ids, low-res mask logits, object score logits): this frame only
        obs = self._observations(*self.last_output, mask_threshold)
        self._prune()
        return obs

    @torch.no_grad()
    def condition(self, masks: dict[int, np.ndarray], remove: list[int]) -> None:
        """On the frame registered last: drop the `remove` objects, and make `masks` (object key -> (H, W) bool at
        the image resolution) the conditioning masks of their objects (new or existing) on this frame."""
        self.remove_objects(remove)
        if not masks:
            self._prune()
            return
        s, f = self.session, self.frame_idx
        for key, mask in masks.items():
            idx = s.obj_id_to_idx(int(key))
            # an object already tracked on this frame becomes a conditioning frame of it, not a corrected one
            s.frames_tracked_per_obj[idx].pop(f, None)
            s.output_dict_per_obj[idx]["non_cond_frame_outputs"].pop(f, None)
            s.output_dict_per_obj[idx]["cond_frame_outputs"].pop(f, None)
            s.add_mask_inputs(idx, f, mask_prompt(mask, self.image_size, self.model.device))
        s.obj_with_new_inputs = [int(k) for k in masks]
        self._run()
        self._prune()

    def remove_objects(self, keys: list[int]) -> None:
        """Remove objects from the session, re-indexing the rest."""
        s = self.session
        keys = [int(k) for k in keys if int(k) in s.obj_ids]
        if not keys:
            return
        remaining = [k for k in s.obj_ids if k not in keys]
        old = {k: s.obj_id_to_idx(k) for k in remaining}  # existing ids: a lookup
        per_obj = (s.point_inputs_per_obj, s.mask_inputs_per_obj, s.output_dict_per_obj, s.frames_tracked_per_obj)
        moved = [{k: store[old[k]] for k in remaining} for store in per_obj]
        for store in per_obj:
            store.clear()
        _renumber_objects(s, remaining)
        for new_idx, k in enumerate(remaining):
            for store, values in zip(per_obj, moved):
                store[new_idx] = values[k]
        s.obj_with_new_inputs = [k for k in s.obj_with_new_inputs if k in remaining]

    def _prune(self) -> None:
        s, f = self.session, self.frame_idx
        if s.processed_frames:
            for k in [k for k in s.processed_frames if k != f]:
                del s.processed_frames[k]
        oldest = f - self.window
        for idx in list(s.output_dict_per_obj):
            outputs = s.output_dict_per_obj[idx]
            non_cond = outputs["non_cond_frame_outputs"]
            for k in [k for k in non_cond if k < oldest]:
                del non_cond[k]
            cond = outputs["cond_frame_outputs"]
            for k in sorted(cond)[:-self.max_cond_frames]:
                del cond[k]
            for store in (non_cond, cond):  # only what memory attention and object pointers read
                for k, out in store.items():
                    if k != f:
                        for name in [n for n in out if n not in self.KEEP_KEYS]:
                            del out[name]
            for store in (s.frames_tracked_per_obj[idx], s.mask_inputs_per_obj[idx], s.point_inputs_per_obj[idx]):
                for k in [k for k in store if k != f]:
                    del store[k]
            s.mask_inputs_per_obj[idx].pop(f, None)  # consumed by the conditioning run


def _renumber_objects(session, obj_ids: list[int]) -> None:
    """Make `obj_ids` the session's objects, numbered 0.. in this order. The one place that writes transformers'
    private id maps (`_obj_id_to_idx`, `_obj_idx_to_id`, transformers 5.23): a Sam3TrackerVideoInferenceSession can
    add objects (obj_id_to_idx) but has no way to remove one, which a lost track's end needs."""
    session._obj_id_to_idx.clear()
    session._obj_idx_to_id.clear()
    for idx, obj_id in enumerate(obj_ids):
        session._obj_id_to_idx[obj_id] = idx
        session._obj_idx_to_id[idx] = obj_id
    session.obj_ids = list(obj_ids)


class CameraTracker:
    """Tracks of one camera: TrackSet (ids) + TrackerSession (SAM3's tracker). Created per camera by the pipeline;
    a new instruction calls reset(), which frees the session (a new one starts on the next keyframe)."""

    def __init__(self):
        self.tracks = TrackSet()
        self.session: TrackerSession | None = None

    def reset(self) -> None:
        """Free the tracker session and forget the tracks (ids keep counting up)."""
        self.tracks.clear()
        self.session = None

    def stored_frames(self) -> int:
        return self.session.stored_frames() if self.session is not None else 0

    def _current(self, model, height: int, width: int) -> bool:
        """Whether the session still fits: the frame size and the tracker's input size it was made for."""
        s = self.session
        return s is not None and (s.height, s.width, s.image_size) == (height, width, model.tracker_input_size)

    def _session_for(self, model, height: int, width: int) -> TrackerSession:
        if not self._current(model, height, width):
            self.tracks.clear()  # a new image size or tracker resolution: the old masks and memories no longer apply
            self.session = TrackerSession(model, height, width)
        return self.session

    def keyframe(self, model, features, detections, *, mask_threshold: float, match_iou: float, nms_iou: float,
                 max_tracked: int, lost_patience: int) -> list[Track]:
        """Detections (masks (N, H, W) bool, scores, boxes; e.g. a postprocessed Prediction) on this frame ->
        the tracks. The tracker first predicts the existing tracks onto this frame (so association compares masks
        of the same frame), then is re-conditioned on the detection masks."""
        height, width = features.original_sizes[0]
        session = self._session_for(model, height, width)
        observations = session.predict(features, mask_threshold)
        keep = mask_nms(detections.masks, detections.scores, nms_iou)
        conditioned, _, dropped = self.tracks.keyframe(
            detections.masks[keep], detections.scores[keep], detections.boxes[keep], observations,
            match_iou=match_iou, max_tracked=max_tracked, lost_patience=lost_patience)
        # tracks that stay lost keep the tracker's current view only for association, not as their reported mask
        session.condition({t.key: t.mask for t in conditioned}, dropped)
        return list(self.tracks.tracks)

    def repeat(self) -> list[Track]:
        """A frame the pipeline found unchanged: the tracks as they are (a new one is no longer new), without a
        tracker step; lost tracks' patience counts only the frames the tracker saw."""
        for track in self.tracks.tracks:
            if track.state == NEW:
                track.state = TRACKED
        return list(self.tracks.tracks)

    def track(self, model, features, *, mask_threshold: float, nms_iou: float, lost_patience: int) -> list[Track]:
        """A tracked (non-key) frame: propagate the tracks with SAM3's tracker."""
        if self.session is None:
            return list(self.tracks.tracks)
        height, width = features.original_sizes[0]
        if not self._current(model, height, width):
            self.reset()  # a new frame size (FramePipeline makes such a frame a keyframe) or tracker resolution
            return []
        observations = self.session.predict(features, mask_threshold)
        dropped = self.tracks.observe(observations, nms_iou, lost_patience)
        self.session.remove_objects(dropped)
        return list(self.tracks.tracks)


__all__ = ["NEW", "TRACKED", "LOST", "mask_iou", "mask_nms", "mask_box", "mask_prompt", "new_streaming_session",
           "Track", "Observation", "TrackSet", "TrackerSession", "CameraTracker"]

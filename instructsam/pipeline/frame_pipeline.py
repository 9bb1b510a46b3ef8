"""The frame pipeline: camera frames + per-camera instructions -> tracked instance sets. No ROS here; the node (and
the bag evaluator) call it.

    submit(camera, image)  ─► latest-frame slot per camera (an unprocessed frame that is replaced counts as dropped)
    step_any() / step(cam) ─► take the newest frame ─► encode_image once (SAM3 ViT + VLM vision tokens)
    step_batch()           ─► the newest frame of every camera that has one, encoded in one batched pass per kind
                              (keyframes, tracked frames), then each camera's step as below
        keyframe? (scheduler.py)  yes ─► InstructSAM detect on those features ─► mask NMS ─► associate with
                                         tracks, re-condition SAM3's tracker on the detected masks (tracker_session.py)
                                  no  ─► SAM3 tracker step on the same features ─► mask NMS, lost/patience
                                         (skip_unchanged: a frame that barely changed repeats the last instances)
        ─► FrameResult (stable ids per camera, never reused)

Threads: submit() may be called from any thread (ROS callbacks); step()/step_any() from one worker thread.
update_settings() and reset() may be called from other threads: settings are swapped atomically, and a camera's
processing state is only touched under that camera's lock.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from instructsam.errors import ImageInputError, InstructionError, InstructSAMInputError
from instructsam.preprocess import to_image_list
from instructsam.pipeline.instructions import DEFAULT_MAX_CHARS, TASKS, ActiveInstruction, InstructionBook
from instructsam.pipeline.model_interface import PipelineModel
from instructsam.pipeline.scheduler import KeyframeScheduler, effective_params
from instructsam.pipeline.tracker_session import LOST, CameraTracker, Track, set_memory_frames

STATS_WINDOW = 256  # latencies kept per camera for the percentiles (a bounded deque: nothing grows per frame)
TOKEN_CACHE_SIZE = 64  # (instruction, task) pairs kept tokenised: every camera's current one, and recent switches


@dataclass
class PipelineSettings:
    keyframe_interval: int = 10  # run the detector every N processed frames (0 or 1: every frame)
    keyframe_seconds: float = 0.0  # also run it when this many seconds passed since the last keyframe (0: off)
    # detections scoring lower are not reported (an instruction may override); < 0: the checkpoint's own
    # threshold (config.score_threshold, calibrated on validation data when the model was trained)
    score_threshold: float = -1.0
    mask_threshold: float = 0.35  # mask probability above which a pixel belongs to an instance (DIT's 0.35)
    nms_iou: float = 0.5  # IoU (box, then mask) above which the lower-scoring of two instances is suppressed
    max_instances: int = 20  # at most this many detections per keyframe (an instruction may override)
    lost_patience: int = 15  # processed frames a lost track keeps its id (>= keyframe_interval: a detection
    # missed on one keyframe must not retire the id before the next keyframe can bring it back)
    max_tracked: int = 20  # at most this many tracks per camera (the tracker's cost grows with it)
    default_task: str = "referring"  # instruction template when an instruction names none
    max_instruction_chars: int = DEFAULT_MAX_CHARS  # for the InstructionBook the pipeline creates itself
    match_iou: float = 0.3  # mask IoU from which a keyframe detection continues an existing track
    max_new_tokens: int = 64  # reference-mode models: the most tokens the VLM may write per keyframe
    batch_cameras: bool = False  # run_worker: the waiting frames of all cameras through one batched encode
    # past frames SAM3's tracker reads (0: the checkpoint's own, 7 for SAM3). 4: the same tracking quality as 7 on
    # the synthetic videos and bags, 0.70x instead of 0.81x a keyframe at full size (BENCHMARKS.md section 10)
    tracker_memory_frames: int = 4
    tracker_scale: float = 1.0  # SAM3's tracker (and a tracked frame's ViT) at this x the detector's token grid
    # a tracked frame that differs from the camera's last frame the model saw by less than this (grey levels, the
    # largest change of an 8x8-pixel block's mean) repeats that frame's instances without model work (0: off)
    skip_unchanged: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def check(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"PipelineSettings.{name} must be {what}, got {getattr(self, name)!r}")

        check(self.keyframe_interval >= 0, "keyframe_interval", ">= 0")
        check(self.keyframe_seconds >= 0, "keyframe_seconds", ">= 0")
        for name in ("mask_threshold", "nms_iou", "match_iou"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]")
        check(self.score_threshold <= 1.0, "score_threshold", "in [0, 1] (or < 0: the checkpoint's threshold)")
        check(self.max_instances >= 1, "max_instances", ">= 1")
        check(self.max_tracked >= 1, "max_tracked", ">= 1")
        check(self.lost_patience >= 0, "lost_patience", ">= 0")
        check(self.max_instruction_chars >= 1, "max_instruction_chars", ">= 1")
        check(self.max_new_tokens >= 1, "max_new_tokens", ">= 1")
        check(self.tracker_memory_frames >= 0, "tracker_memory_frames", ">= 0 (0: the checkpoint's own)")
        check(0.0 < self.tracker_scale <= 1.0, "tracker_scale", "in (0, 1] (1: the detector's resolution)")
        check(0.0 <= self.skip_unchanged <= 255.0, "skip_unchanged", "in [0, 255] grey levels (0: off)")
        check(self.default_task in TASKS, "default_task", f"one of {TASKS}")


class CameraStepError(RuntimeError):
    """step_any() could not process a camera's frame: `camera` names it and `error` is what failed (already counted
    in stats(camera), and the camera reset so its next frame is a keyframe)."""

    def __init__(self, camera: str, error: Exception, started: float):
        super().__init__(f"camera {camera!r}: {type(error).__name__}: {error}")
        self.camera, self.error = camera, error
        self.started = started  # time.monotonic() when the failed step began (which frame it took follows)


@dataclass
class TrackedInstance:
    id: str  # stable per camera, never reused
    score: float
    state: str  # "new" (first frame of this id) | "tracked" | "lost" (not seen this frame; mask empty, last box)
    mask: np.ndarray  # (H, W) bool
    box: np.ndarray  # (4,) xyxy px


@dataclass
class FrameResult:
    camera: str
    frame: Any  # the caller's opaque frame object (e.g. the ROS header), passed through
    height: int
    width: int
    instruction: ActiveInstruction
    instances: list[TrackedInstance]
    keyframe: bool
    frame_index: int  # processed frames of this camera before this one
    processing_ms: float  # this frame's model work
    latency_ms: float  # from `received` (submit) to this result
    keyframe_reason: str = ""  # scheduler.py: "instruction" | "first" | "overrides" | "interval" | "seconds" | ""
    unchanged: bool = False  # skipped as unchanged (settings.skip_unchanged): the last instances, no model work
    answer: str = ""  # reference-mode models: what the VLM wrote on the last keyframe of this instance set


@dataclass
class _Pending:
    image: np.ndarray
    frame: Any
    received: float


@dataclass
class _Camera:
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # processing state below `pending`
    pending: _Pending | None = None  # the latest-frame slot (guarded by the pipeline's slot lock)
    received: int = 0
    dropped: int = 0
    skipped: int = 0  # taken from the slot while the camera had no instruction
    bad_frames: int = 0
    processed: int = 0
    keyframes: int = 0
    errors: int = 0
    last_error: str = ""
    tracks: int = 0  # tracks after the last processed frame (copied here so stats() never reads tracker state)
    tracker_frames: int = 0  # frames the tracker session holds after the last processed frame
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    processing_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    scheduler: KeyframeScheduler = field(default_factory=KeyframeScheduler)
    tracker: CameraTracker = field(default_factory=CameraTracker)
    image_size: tuple[int, int] | None = None  # (H, W) of the last processed frame
    answer: str = ""  # the last keyframe's answer (reference mode), carried by the tracked frames after it
    thumbnail: np.ndarray | None = None  # block means of the last frame the model saw (skip_unchanged)
    unchanged: int = 0  # frames skipped as unchanged


THUMBNAIL_BLOCK = 8  # skip_unchanged compares the means of 8x8-pixel blocks: sensor noise averages out, a moving
# object does not


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> grey block means (H // 8, W // 8) float32 (a frame smaller than a block: its mean)."""
    grey = image.mean(axis=2, dtype=np.float32)
    b = THUMBNAIL_BLOCK
    h, w = grey.shape[0] // b, grey.shape[1] // b
    if not h or not w:
        return grey.mean(keepdims=True)
    return grey[:h * b, :w * b].reshape(h, b, w, b).mean(axis=(1, 3))


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0


class FramePipeline:
    def __init__(self, model: PipelineModel, cameras: list[str], settings: PipelineSettings | None = None,
                 instructions: InstructionBook | None = None):
        if not cameras or len(set(cameras)) != len(cameras) or not all(isinstance(c, str) and c for c in cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct non-empty names, got {cameras!r}")
        self.model = model
        self.settings = settings if settings is not None else PipelineSettings()
        self.instructions = (instructions if instructions is not None
                             else InstructionBook(list(cameras), self.settings.max_instruction_chars))
        self.instructions.model_check = self._check_instruction
        self._cameras = {name: _Camera(name) for name in cameras}
        self._order = list(cameras)
        self._next = 0  # round-robin position of step_any
        self._slots = threading.Lock()  # pending slots, counters, round-robin position
        self._token_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._token_lock = threading.Lock()
        self._apply_tracker_levers(self.settings)

    def _apply_tracker_levers(self, settings: PipelineSettings) -> None:
        """The model-wide tracker settings. A camera whose session was made for another tracker resolution starts
        again on its next keyframe (CameraTracker notices)."""
        set_memory_frames(self.model, settings.tracker_memory_frames)
        self.model.set_tracker_scale(settings.tracker_scale)

    def _tokens(self, text: str, task: str):
        """The instruction's tokens as segment() takes them, encoded once (when the instruction arrives) and reused
        on every keyframe; raises InstructionError for what the model cannot take (e.g. over max_instruction_tokens)."""
        key = (text, task)
        with self._token_lock:
            if key in self._token_cache:
                self._token_cache.move_to_end(key)
                return self._token_cache[key]
        tokens = self.model.prompts.encode([text], task)
        with self._token_lock:
            self._token_cache[key] = tokens
            while len(self._token_cache) > TOKEN_CACHE_SIZE:
                self._token_cache.popitem(last=False)
        return tokens

    def _check_instruction(self, text: str, task: str) -> None:
        self._tokens(text, task or self.settings.default_task)

    @property
    def cameras(self) -> list[str]:
        return list(self._order)

    def _camera(self, camera: str) -> _Camera:
        try:
            return self._cameras[camera]
        except KeyError:
            raise ValueError(f"unknown camera {camera!r}; known cameras: {self._order}") from None

    # ---- input ------------------------------------------------------------------------------------------------
    def submit(self, camera: str, image: np.ndarray, frame: Any = None, received: float | None = None) -> None:
        """Put a frame into the camera's latest-frame slot (replacing an unprocessed one, which counts as dropped).
        image: (H, W, 3) uint8 RGB; a bad one raises ImageInputError (recorded in stats) and changes nothing else."""
        received = time.monotonic() if received is None else received
        cam = self._camera(camera)
        try:
            if getattr(image, "ndim", None) != 3:
                raise ImageInputError(f"expected one (H, W, 3) uint8 RGB image, got "
                                      f"{getattr(image, 'shape', type(image).__name__)}")
            to_image_list(image)  # the model's own validation, so a bad frame is refused here, not in the worker
        except ImageInputError as err:
            with self._slots:
                cam.received += 1
                cam.bad_frames += 1
                cam.last_error = f"bad frame: {err}"
            raise
        with self._slots:
            cam.received += 1
            if cam.pending is not None:
                cam.dropped += 1
            cam.pending = _Pending(image, frame, received)

    # ---- processing -------------------------------------------------------------------------------------------
    def step(self, camera: str) -> FrameResult | None:
        """Process the newest frame of `camera`: None if there is none, or the camera has no instruction (the frame
        is then discarded and the camera's tracks freed). Errors are recorded in stats(camera) and re-raised
        (input errors as the same type, naming the camera); the camera's tracks are reset and the next frame is a
        keyframe, so one bad frame or one failing camera never stops the others."""
        cam = self._camera(camera)
        with self._slots:
            pending, cam.pending = cam.pending, None
        if pending is None:
            return None
        with cam.lock:
            instruction = self.instructions.get(camera)
            if instruction is None:
                self._skip(cam)
                return None
            started = time.monotonic()
            try:
                settings = self.settings
                return self._process(cam, pending, instruction, settings,
                                     self._decide(cam, pending, instruction, started, settings), started)
            except Exception as err:
                failure = self._failed(cam, err, started)
                if failure.error is not err:
                    raise failure.error from err
                raise

    def step_any(self) -> FrameResult | None:
        """Process the newest frame of the next camera (round robin) that has one; None if none has."""
        for _ in range(len(self._order)):
            with self._slots:
                n = len(self._order)
                name = None
                for i in range(n):
                    candidate = self._order[(self._next + i) % n]
                    if self._cameras[candidate].pending is not None:
                        name = candidate
                        self._next = (self._next + i + 1) % n
                        break
            if name is None:
                return None
            started = time.monotonic()
            try:
                result = self.step(name)
            except Exception as err:
                raise CameraStepError(name, err, started) from err
            if result is not None:
                return result
        return None

    def step_batch(self) -> tuple[list[FrameResult], list[CameraStepError]]:
        """Process the newest frame of every camera that has one: the keyframes are encoded together in one
        encode_image call, the tracked frames in another (SAM3's ViT once over the batch), then each camera runs its
        detection or tracker step on its own slice of the features. Every waiting camera is served in the same
        round, so none waits behind another's backlog. Returns the results and the failures (each camera's as in
        step(); if a batched encode fails, its cameras are retried one by one, so a failure stays its camera's)."""
        work = []
        with self._slots:  # the cameras' steps after the encode run in turn: who goes first rotates every round
            n = len(self._order)
            order = [self._order[(self._next + i) % n] for i in range(n)]
            self._next = (self._next + 1) % n
            taken = [(name, self._cameras[name].pending) for name in order if self._cameras[name].pending is not None]
            for name, _ in taken:
                self._cameras[name].pending = None
        results, failures = [], []
        settings = self.settings
        for name, pending in taken:
            cam = self._cameras[name]
            cam.lock.acquire()
            instruction = self.instructions.get(name)
            started = time.monotonic()
            if instruction is None:
                self._skip(cam)
                cam.lock.release()
                continue
            try:
                reason = self._decide(cam, pending, instruction, started, settings)
            except Exception as err:
                failures.append(self._failed(cam, err, started))
                cam.lock.release()
                continue
            work.append((cam, pending, instruction, started, reason))
        try:
            encoded = {}
            for keyframe in (True, False):
                group = [w for w in work if bool(w[4]) == keyframe and (w[4] or len(w[0].tracker.tracks))]
                if not group:
                    continue
                try:
                    features = self.model.encode_image([w[1].image for w in group], vlm=keyframe)
                except Exception:  # e.g. out of memory for the batch: each camera alone, as step() would
                    continue
                for i, w in enumerate(group):
                    encoded[w[0].name] = features.image(i)
            for cam, pending, instruction, started, reason in work:
                try:
                    results.append(self._process(cam, pending, instruction, settings, reason, started,
                                                 encoded.pop(cam.name, None)))
                except Exception as err:
                    failures.append(self._failed(cam, err, started))
        finally:
            for cam, *_ in work:
                cam.lock.release()
        return results, failures

    def run_worker(self, keep_going: Callable[[], bool], idle: Callable[[], bool],
                   on_result: Callable[[FrameResult], bool], on_failure: Callable[[CameraStepError], None]) -> None:
        """The worker loop of the node and of the bag replay: step_any() (settings.batch_cameras: step_batch()) while
        keep_going(); on no pending frame, idle() waits and says whether to go on; on_result(result) says whether to
        go on; a failed frame goes to on_failure (the camera is named by the error, not guessed from counters)."""
        while keep_going():
            if self.settings.batch_cameras:
                results, failures = self.step_batch()
                for failure in failures:
                    on_failure(failure)
                if not results and not failures and not idle():
                    return
                if not all(on_result(r) for r in results):
                    return
                continue
            try:
                result = self.step_any()
            except CameraStepError as failure:
                on_failure(failure)
                continue
            if result is None:
                if not idle():
                    return
            elif not on_result(result):
                return

    def _skip(self, cam: _Camera) -> None:
        """A frame of a camera without an instruction: discarded, the camera's tracks freed."""
        cam.tracker.reset()
        cam.scheduler.reset()
        with self._slots:
            cam.skipped += 1
            cam.tracks = cam.tracker_frames = 0

    def _failed(self, cam: _Camera, err: Exception, started: float) -> CameraStepError:
        """Record a failed frame (the camera reset: its next frame is a keyframe) and name the camera."""
        cam.tracker.reset()
        cam.scheduler.reset()
        with self._slots:
            cam.tracks = cam.tracker_frames = 0
            cam.errors += 1
            cam.last_error = f"{type(err).__name__}: {err}"
        if type(err) in (InstructSAMInputError, ImageInputError, InstructionError):
            err = type(err)(f"camera {cam.name!r}: {err}")
        return CameraStepError(cam.name, err, started)

    def _decide(self, cam: _Camera, pending: _Pending, instruction: ActiveInstruction, start: float,
                settings: PipelineSettings) -> str:
        """Whether this frame is a keyframe (the reason, "" for a tracked frame), resetting what a new resolution or
        a new instruction invalidates."""
        session = cam.tracker.session
        if cam.image_size not in (None, pending.image.shape[:2]) or \
                (session is not None and session.image_size != self.model.tracker_input_size):
            # a new resolution of the frames or of the tracker (tracker_scale): the tracker session is per size, so
            # start over with a detection ("first")
            cam.scheduler.reset()
            cam.tracker.reset()
        cam.image_size = pending.image.shape[:2]
        reason = cam.scheduler.decide(instruction, start, settings)
        if reason == "instruction":
            cam.tracker.reset()  # a new instance set: new ids (the counter keeps going)
            cam.answer = ""
        return reason

    @torch.no_grad()
    def _process(self, cam: _Camera, pending: _Pending, instruction: ActiveInstruction,
                 settings: PipelineSettings, reason: str, start: float, features=None) -> FrameResult:
        """One camera's frame after _decide: `features` are its frame's, when a batched encode made them."""
        model = self.model
        thumb = thumbnail(pending.image) if settings.skip_unchanged > 0 else None
        unchanged = (not reason and thumb is not None and cam.thumbnail is not None
                     and cam.thumbnail.shape == thumb.shape
                     and float(np.abs(thumb - cam.thumbnail).max()) < settings.skip_unchanged)
        if not reason and (unchanged or not len(cam.tracker.tracks)):  # no model work: nothing changed, or
            height, width = pending.image.shape[:2]  # nothing to track until the next keyframe
            tracks = cam.tracker.repeat() if unchanged else []
        else:  # encode once; the detector and the tracker both use these features (the VLM's only on keyframes)
            if features is None:
                features = model.encode_image(pending.image, vlm=bool(reason))
            height, width = features.original_sizes[0]
            tracks = self._detect_or_track(cam, features, instruction, settings, reason)
            del features  # nothing of this frame's tensors outlives the step (the session keeps its own copy)
            cam.thumbnail = thumb
        instances = [_instance(t, height, width) for t in sorted(tracks, key=lambda t: t.key)]
        cam.scheduler.record(instruction, bool(reason), start, settings)
        end = time.monotonic()
        processing_ms, latency_ms = (end - start) * 1e3, (end - pending.received) * 1e3
        with self._slots:
            index = cam.processed
            cam.processed += 1
            cam.keyframes += bool(reason)
            cam.unchanged += unchanged
            cam.processing_ms.append(processing_ms)
            cam.latency_ms.append(latency_ms)
            cam.tracks, cam.tracker_frames = len(cam.tracker.tracks), cam.tracker.stored_frames()
        return FrameResult(camera=cam.name, frame=pending.frame, height=height, width=width, instruction=instruction,
                           instances=instances, keyframe=bool(reason), frame_index=index,
                           processing_ms=processing_ms, latency_ms=latency_ms, keyframe_reason=reason,
                           answer=cam.answer, unchanged=unchanged)

    def _detect_or_track(self, cam: _Camera, features, instruction: ActiveInstruction, settings: PipelineSettings,
                         reason: str) -> list[Track]:
        model = self.model
        if not reason:
            return cam.tracker.track(model, features, mask_threshold=settings.mask_threshold,
                                     nms_iou=settings.nms_iou, lost_patience=settings.lost_patience)
        params = effective_params(instruction, settings)
        output = model.segment(features, [instruction.text], task=params.task,
                               tokens=self._tokens(instruction.text, params.task),
                               max_new_tokens=settings.max_new_tokens)
        cam.answer = output.answers[0] if output.answers else ""
        detections = model.postprocess(output, features.original_sizes, score_threshold=params.score_threshold,
                                       mask_threshold=settings.mask_threshold, nms_iou=settings.nms_iou,
                                       max_instances=params.max_instances)[0]
        return cam.tracker.keyframe(
            model, features, detections, mask_threshold=settings.mask_threshold, match_iou=settings.match_iou,
            nms_iou=settings.nms_iou, max_tracked=settings.max_tracked, lost_patience=settings.lost_patience)

    # ---- control ----------------------------------------------------------------------------------------------
    def stats(self, camera: str) -> dict:
        cam = self._camera(camera)
        with self._slots:
            latency, processing = list(cam.latency_ms), list(cam.processing_ms)
            out = dict(camera=cam.name, received=cam.received, processed=cam.processed, dropped=cam.dropped,
                       skipped=cam.skipped, unchanged=cam.unchanged, bad_frames=cam.bad_frames,
                       keyframes=cam.keyframes, errors=cam.errors,
                       last_error=cam.last_error, pending=cam.pending is not None, tracks=cam.tracks,
                       tracker_frames=cam.tracker_frames)
        out.update(latency_p50_ms=_percentile(latency, 50), latency_p95_ms=_percentile(latency, 95),
                   processing_p50_ms=_percentile(processing, 50), processing_p95_ms=_percentile(processing, 95))
        return out

    def update_settings(self, **changes) -> PipelineSettings:
        """Change settings at runtime (e.g. thresholds): unknown names or bad values raise ValueError and change
        nothing. Takes effect from the next processed frame."""
        names = {f.name for f in dataclasses.fields(PipelineSettings)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown pipeline setting(s) {unknown}; known: {sorted(names)}")
        self.settings = dataclasses.replace(self.settings, **changes)  # validated in __post_init__; atomic swap
        if {"tracker_memory_frames", "tracker_scale"} & set(changes):
            self._apply_tracker_levers(self.settings)
        return self.settings

    def reset(self, camera: str | None = None) -> None:
        """Free tracker state and pending frames of one camera or all (e.g. lifecycle deactivate). Waits for a
        step of that camera in progress. Instructions are kept (they belong to the InstructionBook)."""
        for name in [camera] if camera is not None else self._order:
            cam = self._camera(name)
            with self._slots:
                cam.pending = None
            with cam.lock:
                cam.tracker.reset()
                cam.scheduler.reset()
            with self._slots:
                cam.tracks = cam.tracker_frames = 0


def _instance(track: Track, height: int, width: int) -> TrackedInstance:
    if track.state == LOST:
        mask = np.zeros((height, width), dtype=bool)
    else:
        mask = track.mask
    return TrackedInstance(id=track.id, score=float(track.score), state=track.state, mask=mask,
                           box=np.asarray(track.box, dtype=np.float32))


__all__ = ["CameraStepError", "PipelineSettings", "TrackedInstance", "FrameResult", "FramePipeline"]

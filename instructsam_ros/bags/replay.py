"""Replay one bag through the frame pipeline the node uses (FramePipeline: same scheduler, same tracking, same
decoding) and record every frame's result.

    fast      (default) every frame is submitted and processed before the next one is read: submit(frame) then
              step(camera), in recorded order. This is what the live node does whenever frames arrive slower than
              it processes them, so the results equal the node's on the same frames and instructions.
    recorded  frames are submitted at their recorded inter-frame gaps (divided by `rate`) while a worker thread
              processes the newest frame of each camera, exactly like the node's worker: frames that arrive while
              the pipeline is busy replace the waiting one and are reported as dropped.

Malformed image messages (undeserialisable, undecodable, refused by the model's input checks) are reported as
SkippedMessage (topic, timestamps, reason) and skipped; the replay goes on. Topics other than the chosen camera
topics and the instruction topic are ignored.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from instructsam.errors import ImageInputError
from instructsam.pipeline.frame_pipeline import FramePipeline, FrameResult, PipelineSettings
from instructsam.pipeline.image_decode import DEFAULT_MAX_PIXELS, decode_image_message
from instructsam.pipeline.instructions import InstructionRejected
from instructsam.pipeline.drawing import draw_result
from instructsam_ros.bags.reader import BagMessage, BagSource
from instructsam_ros.bags.records import (DROPPED, FAILED, NO_INSTRUCTION, PROCESSED, BagRecords, FrameRecord, InstanceRecord,
                      SkippedMessage, as_float32, encode_rle)
from instructsam_ros.bags.schedule import InstructionSchedule
from instructsam_ros.bags.typestore import STRING, stamp_ns
from instructsam_ros.bags.writer import STORAGES, OutputBag

TIMINGS = ("fast", "recorded")


@dataclass
class ReplayOptions:
    topics: Any = None  # None: every Image/CompressedImage topic; a list of topics; or {topic: camera name}
    schedule: InstructionSchedule | None = None  # instructions from a timed YAML list ...
    instruction_topic: str | None = None  # ... and/or from an instruction topic recorded in the bag
    timing: str = "fast"
    rate: float = 1.0  # recorded timing: playback speed factor (2.0 = twice as fast as recorded)
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_bag: str | None = None  # write the results to this (new) bag directory
    output_storage: str | None = None  # sqlite3 | mcap; None: the input bag's storage
    overlay: bool = False  # also write /<camera>/overlay images into the output bag
    progress: bool = True  # tqdm bar over the bag's image messages
    on_frame: Callable[[int], None] | None = field(default=None, repr=False)  # called per image message

    def validate(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {self.timing!r}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate!r}")
        if self.schedule is None and self.instruction_topic is None:
            raise ValueError("no instructions: give a schedule (YAML or a constant text) or an instruction topic")


@dataclass
class _Frame:
    """FramePipeline's opaque `frame`: what the result needs to become a record (and the output message)."""

    seq: int
    camera: str
    topic: str
    index: int
    log_time_ns: int
    stamp_ns: int
    header: Any
    image: Any = None  # kept only for the overlay


def record_from_result(frame: _Frame, result: FrameResult) -> FrameRecord:
    return FrameRecord(
        seq=frame.seq, camera=frame.camera, topic=frame.topic, index=frame.index, log_time_ns=frame.log_time_ns,
        stamp_ns=frame.stamp_ns, frame_id=str(frame.header.frame_id), status=PROCESSED,
        instruction_id=result.instruction.id, instruction=result.instruction.text, answer=result.answer,
        keyframe=bool(result.keyframe),
        keyframe_reason=result.keyframe_reason, frame_index=int(result.frame_index),
        processing_ms=float(result.processing_ms), latency_ms=float(result.latency_ms), height=int(result.height),
        width=int(result.width),
        instances=[InstanceRecord(id=str(i.id), score=as_float32(i.score), state=i.state, rle=encode_rle(i.mask))
                   for i in result.instances])


def _unprocessed(frame: _Frame, status: str) -> FrameRecord:
    return FrameRecord(seq=frame.seq, camera=frame.camera, topic=frame.topic, index=frame.index,
                       log_time_ns=frame.log_time_ns, stamp_ns=frame.stamp_ns, frame_id=str(frame.header.frame_id),
                       status=status)


class _Replay:
    def __init__(self, path, model, settings: PipelineSettings, options: ReplayOptions, name: str):
        self.source = BagSource(path, options.topics, options.instruction_topic)
        self.options = options
        self.name = name
        self.frames: list[FrameRecord] = []
        self.skipped: list[SkippedMessage] = []
        self.counters = {t: 0 for t in self.source.camera_of}
        self.lock = threading.Lock()  # frames/skipped/output bag: the worker thread writes them too
        self.output = None
        try:
            self.source.require_cameras()
            self.pipeline = FramePipeline(model, list(self.source.cameras), settings)
            self.book = self.pipeline.instructions
            self.cursor = (options.schedule.cursor(self.source.cameras, self.source.start_time_ns)
                           if options.schedule is not None else None)
            if options.output_bag:
                storage = options.output_storage or (self.source.storage if self.source.storage in STORAGES
                                                     else "sqlite3")
                self.output = OutputBag(options.output_bag, list(self.source.cameras), storage, options.overlay)
        except Exception:
            self.source.close()
            raise

    def skip(self, message: BagMessage, stamp: int | None, reason: str) -> None:
        with self.lock:
            self.skipped.append(SkippedMessage(self.name, message.topic, message.log_time_ns, stamp, reason))

    def instruction(self, message: BagMessage) -> None:
        """An instruction message recorded in the bag: applied as the node applies it (camera "" = every camera;
        an empty id gets the InstructionBook's next "instr-N", as in the node)."""
        try:
            msg = self.source.deserialize(message)
        except Exception as err:
            self.skip(message, None, f"cannot deserialize {message.msgtype}: {type(err).__name__}: {err}")
            return
        try:
            if message.msgtype == STRING:
                self.book.set(msg.data)
            else:
                self.book.apply_message(msg)
        except InstructionRejected as err:
            self.skip(message, None, f"instruction rejected: {err}")

    def decode(self, message: BagMessage):
        """An image message -> (_Frame, RGB image), or None after reporting why it was skipped."""
        camera = self.source.camera_of[message.topic]
        index = self.counters[message.topic]
        self.counters[message.topic] += 1
        if self.cursor is not None:
            try:
                self.cursor.apply_due(self.book, camera, index, message.log_time_ns)
            except InstructionRejected as err:
                raise ValueError(f"{self.options.schedule.source}: camera {camera}: {err}") from err
        try:
            msg = self.source.deserialize(message)
        except Exception as err:
            self.skip(message, None, f"cannot deserialize {message.msgtype}: {type(err).__name__}: {err}")
            return None
        stamp = stamp_ns(msg.header.stamp)
        try:
            image = decode_image_message(msg, self.options.max_pixels)
        except ImageInputError as err:
            self.skip(message, stamp, str(err))
            return None
        frame = _Frame(message.seq, camera, message.topic, index, message.log_time_ns, stamp, msg.header,
                       image if self.options.overlay else None)
        return frame, image

    def submit(self, message: BagMessage, frame: _Frame, image) -> bool:
        if self.book.get(frame.camera) is None:
            with self.lock:
                self.frames.append(_unprocessed(frame, NO_INSTRUCTION))
            return False
        try:
            self.pipeline.submit(frame.camera, image, frame, time.monotonic())
        except ImageInputError as err:
            self.skip(message, frame.stamp_ns, f"image refused: {err}")
            return False
        return True

    def result(self, result: FrameResult) -> None:
        frame: _Frame = result.frame
        record = record_from_result(frame, result)
        with self.lock:
            self.frames.append(record)
            if self.output is not None:
                overlay = draw_result(frame.image, result) if frame.image is not None else None
                self.output.write(record, frame.header, overlay)

    def failed(self, message: BagMessage, frame: _Frame, err: Exception) -> None:
        with self.lock:
            self.frames.append(_unprocessed(frame, FAILED))
        self.skip(message, frame.stamp_ns, f"processing failed: {type(err).__name__}: {err}")

    # ---- the two timing modes ----------------------------------------------------------------------------
    def run_fast(self, tick) -> None:
        for message in self.source.messages():
            if message.kind == "instruction":
                self.instruction(message)
                continue
            tick()
            decoded = self.decode(message)
            if decoded is None or not self.submit(message, *decoded):
                continue
            frame = decoded[0]
            try:
                result = self.pipeline.step(frame.camera)
            except Exception as err:  # the pipeline recorded it and reset the camera: report, go on
                self.failed(message, frame, err)
                continue
            if result is None:  # cannot happen (an instruction is set); keep the frame accounted for anyway
                with self.lock:
                    self.frames.append(_unprocessed(frame, NO_INSTRUCTION))
            else:
                self.result(result)

    def run_recorded(self, tick) -> None:
        submitted: dict[str, list[tuple[float, BagMessage, _Frame]]] = {c: [] for c in self.source.cameras}
        errors: list[tuple[str, float, Exception]] = []  # (camera, step start, error)
        answered: set[int] = set()
        fatal: list[BaseException] = []
        done = threading.Event()
        wake = threading.Event()

        def idle() -> bool:
            if done.is_set():
                return False
            wake.wait(0.002)
            wake.clear()
            return True

        def answer(result) -> bool:
            answered.add(result.frame.seq)
            try:
                self.result(result)
            except BaseException as err:  # e.g. the output bag cannot be written: the run cannot complete
                fatal.append(err)
                return False
            return True

        def work() -> None:  # the node's worker loop, until the feed is done and nothing is pending
            self.pipeline.run_worker(lambda: True, idle, answer,
                                     lambda failure: errors.append((failure.camera, failure.started,
                                                                    failure.error)))

        worker = threading.Thread(target=work, name="bag-replay-worker", daemon=True)
        worker.start()
        t0_log = None
        t0_wall = time.monotonic()
        try:
            for message in self.source.messages():
                if fatal:
                    break
                if t0_log is None:
                    t0_log = message.log_time_ns
                delay = t0_wall + (message.log_time_ns - t0_log) / 1e9 / self.options.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if message.kind == "instruction":
                    self.instruction(message)
                    continue
                tick()
                decoded = self.decode(message)
                if decoded is None:
                    continue
                frame = decoded[0]
                now = time.monotonic()
                if self.submit(message, *decoded):
                    submitted[frame.camera].append((now, message, frame))
                    wake.set()
        finally:
            done.set()
            wake.set()
            worker.join()
        if fatal:
            raise fatal[0]
        # a frame nobody answered was either replaced in the latest-frame slot (dropped) or taken by a step that
        # failed: the failed step started after that frame was submitted and before the next one of its camera was
        for camera, items in submitted.items():
            for k, (t_sub, message, frame) in enumerate(items):
                if frame.seq in answered:
                    continue
                t_next = items[k + 1][0] if k + 1 < len(items) else float("inf")
                err = next((e for c, t, e in errors if c == camera and t_sub <= t < t_next), None)
                if err is not None:
                    self.failed(message, frame, err)
                else:
                    with self.lock:
                        self.frames.append(_unprocessed(frame, DROPPED))

    def run(self) -> BagRecords:
        start = time.monotonic()
        opts = self.options
        try:
            with tqdm(total=self.source.image_count, desc=self.name, unit="frame", disable=not opts.progress,
                      leave=False) as bar:
                def tick() -> None:
                    bar.update(1)
                    if opts.on_frame is not None:
                        opts.on_frame(1)

                (self.run_recorded if opts.timing == "recorded" else self.run_fast)(tick)
        except BaseException:
            if self.output is not None:
                self.output.abort()
            raise
        else:
            if self.output is not None:
                self.output.close()
        finally:
            self.source.close()
        self.frames.sort(key=lambda f: f.seq)
        self.skipped.sort(key=lambda s: (s.log_time_ns, s.topic))
        return BagRecords(
            bag=str(self.source.path), name=self.name, storage=self.source.storage, cameras=dict(self.source.cameras),
            timing=opts.timing, rate=opts.rate, settings=asdict(self.pipeline.settings),
            instructions_from=(opts.schedule.source if opts.schedule is not None else "")
            + (f" topic {opts.instruction_topic}" if opts.instruction_topic else ""),
            frames=self.frames, skipped=self.skipped, ignored_topics=self.source.ignored_topics,
            stats={c: self.pipeline.stats(c) for c in self.source.cameras},
            wall_seconds=time.monotonic() - start, output_bag=opts.output_bag)


def replay_bag(path, model, settings: PipelineSettings | None = None, options: ReplayOptions | None = None,
               name: str | None = None) -> BagRecords:
    """Replay one bag (see the module docstring). Ground truth is the evaluator's (bag_eval.groundtruth.attach)."""
    options = options or ReplayOptions()
    options.validate()
    name = name or Path(path).name
    return _Replay(path, model, settings or PipelineSettings(), options, name).run()


__all__ = ["TIMINGS", "ReplayOptions", "replay_bag", "record_from_result"]

"""What one evaluated bag leaves behind: a record per image frame and per skipped message (plain dataclasses that
round-trip through JSON, so shards evaluated on other machines merge into one report).

Everything the metrics need is in the records, ground truth included (the target masks of each frame, attached by
groundtruth.attach): `bag_eval merge` needs neither the bags nor the ground-truth files.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructsam_ros.message_codec import STATE_CODES, STATE_NAMES, decode_rle, encode_rle  # noqa: F401  (re-exported)

RECORDS_FORMAT = "instructsam-bag-records/1"

# FrameRecord.status
PROCESSED = "processed"  # the pipeline produced a result for this frame
DROPPED = "dropped"  # replaced in the latest-frame slot before the pipeline took it (recorded-timing mode)
NO_INSTRUCTION = "no_instruction"  # no instruction was active for this camera (no result, as in the node)
FAILED = "failed"  # the pipeline raised on this frame (also listed in BagRecords.skipped)

def as_float32(value: float) -> float:
    """The value an InstanceMask float32 field carries: records hold exactly what a message would."""
    return float(np.float32(value))


@dataclass
class InstanceRecord:
    id: str
    score: float  # float32-rounded, as in the message
    state: str  # new | tracked | lost
    rle: str  # compressed COCO RLE counts at the frame's (height, width); an empty mask for "lost"


@dataclass
class TruthObject:
    object_id: Any  # int or str, as in the ground-truth file
    rle: str


@dataclass
class FrameTruth:
    """The targets of the frame's instruction on this frame (possibly none: a no-target frame)."""

    targets: list[TruthObject]
    family: str = ""


@dataclass
class FrameRecord:
    seq: int  # position in the bag's recorded order (among the messages read)
    camera: str
    topic: str
    index: int  # image message index on this topic, recorded order, bad messages included
    log_time_ns: int  # when the recorder received it
    stamp_ns: int  # header stamp (sec * 1e9 + nanosec): the key ground truth uses
    frame_id: str
    status: str
    instruction_id: str = ""
    instruction: str = ""
    answer: str = ""  # what a reference-mode model wrote (InstanceMaskArray.answer)
    keyframe: bool = False
    keyframe_reason: str = ""
    frame_index: int = -1  # the pipeline's processed-frame counter of this camera
    processing_ms: float = 0.0
    latency_ms: float = 0.0
    height: int = 0
    width: int = 0
    instances: list[InstanceRecord] = field(default_factory=list)
    gt: FrameTruth | None = None

    def visible(self) -> list[InstanceRecord]:
        """Instances with a mask on this frame (lost ones keep their id but have no mask)."""
        return [i for i in self.instances if i.state != "lost"]


@dataclass
class SkippedMessage:
    bag: str
    topic: str
    log_time_ns: int
    stamp_ns: int | None  # None when the message could not even be deserialised
    reason: str

    def line(self) -> str:
        if self.stamp_ns is None:
            stamp = "?"
        else:
            stamp = f"{self.stamp_ns // 1_000_000_000}.{self.stamp_ns % 1_000_000_000:09d}"
        return f"skipped: {self.bag} {self.topic} t={self.log_time_ns} stamp={stamp}: {self.reason}"


@dataclass
class BagRecords:
    bag: str  # the path as given
    name: str  # the bag's directory name (reports and output files use it)
    storage: str
    cameras: dict[str, str]  # camera name -> image topic
    timing: str  # fast | recorded
    rate: float
    settings: dict
    instructions_from: str  # where the instructions came from (file, topic or text)
    frames: list[FrameRecord] = field(default_factory=list)
    skipped: list[SkippedMessage] = field(default_factory=list)
    ignored_topics: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # camera -> FramePipeline.stats()
    wall_seconds: float = 0.0
    output_bag: str | None = None
    ground_truth: str | None = None  # the ground-truth file attached, if any
    run_key: dict = field(default_factory=dict)  # what produced these records (bag_eval run: resume matches it)
    format: str = RECORDS_FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "<records>") -> "BagRecords":
        if data.get("format") != RECORDS_FORMAT:
            raise ValueError(f"{where}: not a bag-records file (format {data.get('format')!r}, "
                             f"expected {RECORDS_FORMAT!r})")
        data = dict(data)
        frames = []
        for f in data.pop("frames"):
            f = dict(f)
            f["instances"] = [InstanceRecord(**i) for i in f.get("instances", [])]
            gt = f.get("gt")
            if gt is not None:
                f["gt"] = FrameTruth(targets=[TruthObject(**t) for t in gt["targets"]], family=gt.get("family", ""))
            frames.append(FrameRecord(**f))
        skipped = [SkippedMessage(**s) for s in data.pop("skipped")]
        return cls(frames=frames, skipped=skipped, **data)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False))
        os.replace(tmp, path)  # a records file is complete or absent, never half-written
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BagRecords":
        from instructsam_ros.bags.documents import read_document

        return cls.from_json(read_document(path, "bag records file"), str(path))

    def counts(self) -> dict:
        by_status = {s: 0 for s in (PROCESSED, DROPPED, NO_INSTRUCTION, FAILED)}
        for f in self.frames:
            by_status[f.status] = by_status.get(f.status, 0) + 1
        return {"frames": len(self.frames), **by_status, "skipped": len(self.skipped)}


def record_from_instance_array(msg, *, seq: int, topic: str, index: int, log_time_ns: int) -> FrameRecord:
    """A FrameRecord from an InstanceMaskArray message (rclpy's or rosbags'; duck-typed): how results the live
    node published, or an output bag recorded from it, are scored exactly like the evaluator's own."""
    from instructsam_ros.bags.typestore import stamp_ns

    instances = []
    for inst in msg.instances:
        if (int(inst.mask_height), int(inst.mask_width)) != (int(msg.height), int(msg.width)):
            raise ValueError(f"instance {inst.id!r} of camera {msg.camera!r}: mask {inst.mask_height}x"
                             f"{inst.mask_width} but the frame is {msg.height}x{msg.width}")
        instances.append(InstanceRecord(id=str(inst.id), score=as_float32(inst.score),
                                        state=STATE_NAMES[int(inst.state)], rle=str(inst.rle_counts)))
    return FrameRecord(
        seq=seq, camera=str(msg.camera), topic=topic, index=index, log_time_ns=int(log_time_ns),
        stamp_ns=stamp_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), status=PROCESSED,
        instruction_id=str(msg.instruction_id), instruction=str(msg.instruction), keyframe=bool(msg.keyframe),
        frame_index=int(msg.frame_index), processing_ms=float(msg.processing_ms), latency_ms=float(msg.latency_ms),
        height=int(msg.height), width=int(msg.width), instances=instances)


__all__ = ["RECORDS_FORMAT", "PROCESSED", "DROPPED", "NO_INSTRUCTION", "FAILED", "STATE_CODES", "STATE_NAMES",
           "InstanceRecord", "TruthObject", "FrameTruth", "FrameRecord", "SkippedMessage", "BagRecords",
           "encode_rle", "decode_rle", "as_float32", "record_from_instance_array"]

"""Ground truth for bags: per image topic, per frame (by header stamp), the instances with persistent object ids
as COCO RLE; per instruction, the object ids it refers to. Format (docs/bag_evaluation.md)::

    {"format": "instructsam-bag-gt/1",
     "topics": {"/cam0/image_raw": {"height": 64, "width": 64, "frames": [
         {"stamp": {"sec": 1700000000, "nanosec": 0},          # or "stamp_ns": 1700000000000000000
          "instances": [{"object_id": 1, "segmentation": {"size": [64, 64], "counts": "..."}}],
          "targets": {"v0-1": [1]}}]}},                        # optional, per instruction id
     "instructions": [{"id": "v0-1", "text": "...", "family": "category", "target_ids": [1, 3]}]}

The targets of instruction I on a frame are the frame's "targets"[I] when given, else I's target_ids that have an
instance on that frame. A frame whose targets are empty is a no-target frame (it scores N-acc).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from instructsam_tools.data.inst2seg import check_segmentation, decode_segmentation
from instructsam_ros.bags.documents import read_document
from instructsam_ros.bags.records import BagRecords, FrameTruth, TruthObject, encode_rle

GT_FORMAT = "instructsam-bag-gt/1"


class GroundTruthError(ValueError):
    """A ground-truth file that does not follow the format; the message names the file and the field."""


@dataclass
class FrameGT:
    instances: dict  # object id -> compressed RLE counts
    targets: dict  # instruction id -> [object ids]


@dataclass
class TopicGT:
    topic: str
    height: int
    width: int
    frames: dict[int, FrameGT] = field(default_factory=dict)  # stamp_ns -> frame


@dataclass
class InstructionGT:
    id: str
    text: str = ""
    family: str = ""
    target_ids: list | None = None


@dataclass
class GroundTruth:
    path: str
    topics: dict[str, TopicGT]
    instructions: dict[str, InstructionGT]

    def frame_truth(self, topic: str, stamp: int, instruction_id: str) -> FrameTruth | None:
        """The targets of `instruction_id` on the frame of `topic` stamped `stamp`; None when that frame or that
        instruction has no ground truth (the frame is then not scored)."""
        t = self.topics.get(topic)
        frame = t.frames.get(stamp) if t is not None else None
        ins = self.instructions.get(instruction_id)
        if frame is None or ins is None:
            return None
        if instruction_id in frame.targets:
            ids = frame.targets[instruction_id]
        elif ins.target_ids is not None:
            ids = [o for o in ins.target_ids if o in frame.instances]
        else:
            return None
        return FrameTruth(targets=[TruthObject(object_id=o, rle=frame.instances[o]) for o in ids], family=ins.family)


def stamp_of(entry: dict, where: str) -> int:
    if "stamp_ns" in entry:
        return int(entry["stamp_ns"])
    stamp = entry.get("stamp")
    if not isinstance(stamp, dict) or "sec" not in stamp or "nanosec" not in stamp:
        raise GroundTruthError(f"{where}: needs 'stamp': {{'sec', 'nanosec'}} or 'stamp_ns'")
    return int(stamp["sec"]) * 1_000_000_000 + int(stamp["nanosec"])


def parse_ground_truth(data: dict, path: str = "<ground truth>") -> GroundTruth:
    def need(obj, key, where, kind):
        if not isinstance(obj, dict) or key not in obj:
            raise GroundTruthError(f"{path}: {where}: missing '{key}'")
        if not isinstance(obj[key], kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise GroundTruthError(f"{path}: {where}.{key}: expected {names}, got {type(obj[key]).__name__}")
        return obj[key]

    if not isinstance(data, dict) or data.get("format") != GT_FORMAT:
        raise GroundTruthError(f"{path}: not a bag ground-truth file ('format' must be {GT_FORMAT!r}, "
                               f"got {data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    instructions: dict[str, InstructionGT] = {}
    for k, ins in enumerate(need(data, "instructions", "top level", list)):
        where = f"instructions[{k}]"
        iid = str(need(ins, "id", where, (str, int)))
        if iid in instructions:
            raise GroundTruthError(f"{path}: {where}: duplicate instruction id {iid!r}")
        target_ids = ins.get("target_ids")
        if target_ids is not None and not isinstance(target_ids, list):
            raise GroundTruthError(f"{path}: {where}.target_ids: expected a list of object ids")
        instructions[iid] = InstructionGT(id=iid, text=str(ins.get("text", "")), family=str(ins.get("family", "")),
                                          target_ids=target_ids)
    topics: dict[str, TopicGT] = {}
    for name, t in need(data, "topics", "top level", dict).items():
        where = f"topics[{name!r}]"
        height, width = int(need(t, "height", where, int)), int(need(t, "width", where, int))
        topic = TopicGT(topic=name, height=height, width=width)
        for i, fr in enumerate(need(t, "frames", where, list)):
            fwhere = f"{where}.frames[{i}]"
            stamp = stamp_of(fr, f"{path}: {fwhere}")
            if stamp in topic.frames:
                raise GroundTruthError(f"{path}: {fwhere}: duplicate stamp {stamp} ns on {name}")
            instances = {}
            for j, inst in enumerate(fr.get("instances", [])):
                iwhere = f"{fwhere}.instances[{j}]"
                oid = need(inst, "object_id", iwhere, (int, str))
                if oid in instances:
                    raise GroundTruthError(f"{path}: {iwhere}: object_id {oid!r} appears twice in one frame")
                seg = need(inst, "segmentation", iwhere, (dict, list))
                try:
                    check_segmentation(seg, height, width)
                    mask = decode_segmentation(seg, height, width, iwhere)
                except (ValueError, KeyError) as err:
                    raise GroundTruthError(f"{path}: {iwhere}.segmentation: {err}") from None
                instances[oid] = encode_rle(mask)
            targets = {}
            for iid, ids in (fr.get("targets") or {}).items():
                if iid not in instructions:
                    raise GroundTruthError(f"{path}: {fwhere}.targets: unknown instruction id {iid!r} "
                                           f"(instructions: {sorted(instructions)})")
                missing = [o for o in ids if o not in instances]
                if missing:
                    raise GroundTruthError(f"{path}: {fwhere}.targets[{iid!r}]: object ids {missing} have no "
                                           f"instance on this frame")
                targets[iid] = list(ids)
            topic.frames[stamp] = FrameGT(instances=instances, targets=targets)
        topics[name] = topic
    return GroundTruth(path=path, topics=topics, instructions=instructions)


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    return parse_ground_truth(read_document(path, "ground-truth file", GroundTruthError), str(path))


def attach(records: BagRecords, gt: GroundTruth) -> BagRecords:
    """Give every processed frame its FrameTruth (in place; returns records). Frames without ground truth keep
    gt=None. A size mismatch between a frame and its ground truth is an error naming both."""
    for f in records.frames:
        f.gt = None
        if f.status != "processed":
            continue
        truth = gt.frame_truth(f.topic, f.stamp_ns, f.instruction_id)
        if truth is None:
            continue
        t = gt.topics[f.topic]
        if (t.height, t.width) != (f.height, f.width):
            raise GroundTruthError(f"{gt.path}: {f.topic} is {t.height}x{t.width} in the ground truth, but the frame "
                                   f"stamped {f.stamp_ns} ns is {f.height}x{f.width}")
        f.gt = truth
    records.ground_truth = gt.path
    return records


def ground_truth_json(topics: dict[str, dict], instructions: list[dict]) -> dict:
    """Assemble a ground-truth document (used by the synthetic bag generator)."""
    return {"format": GT_FORMAT, "topics": topics, "instructions": instructions}


__all__ = ["GT_FORMAT", "GroundTruthError", "GroundTruth", "TopicGT", "FrameGT", "InstructionGT",
           "parse_ground_truth", "load_ground_truth", "attach", "ground_truth_json"]

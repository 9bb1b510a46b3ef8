"""Synthetic ground-truth bags, from the synthetic video generator (instructsam_tools.data.synthetic_video): moving
shapes with persistent object ids, per-frame visible masks and attribute-based video instructions.

Each bag holds `cameras` videos, one per camera topic (/cam<k>/image_raw, or /cam<k>/image_raw/compressed), and
comes with its ground truth and instruction schedule next to it::

    OUT/synthetic_0/                       the rosbag2 (sqlite3 or mcap)
    OUT/synthetic_0.gt.json                ground truth (groundtruth.py format)
    OUT/synthetic_0.instructions.yaml      the schedule (schedule.py format): the video's instructions in turn

With `instruction_topic`, the same instructions are also recorded in the bag (instructsam_ros/msg/Instruction) just
before the frame they apply from, so a replay from the topic equals a replay from the YAML.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Writer

from instructsam_tools.data.inst2seg import encode_mask
from instructsam_tools.data.synthetic_video import VideoSample, generate_video
from instructsam_tools.bag_eval.groundtruth import ground_truth_json
from instructsam_ros.bags.schedule import InstructionSchedule, ScheduleEntry
from instructsam_ros.bags.typestore import COMPRESSED_IMAGE, IMAGE, INSTRUCTION, typestore
from instructsam_ros.bags.writer import BAG_VERSION, STORAGES, header_msg

START_SEC = 1_700_000_000  # header stamps start here (bag i: + 1000 s * i)
ENCODINGS = ("rgb8", "bgr8")
FORMATS = ("jpeg", "png")


@dataclass
class SyntheticBag:
    bag: Path
    ground_truth: Path
    schedule: Path
    videos: list[VideoSample]


def image_message(store, image: np.ndarray, header, compressed: bool, image_format: str = "jpeg",
                  encoding: str = "rgb8"):
    """(H, W, 3) RGB -> a rosbags sensor_msgs Image (rgb8/bgr8) or CompressedImage (jpeg/png), as a camera driver
    and image_transport would publish it."""
    if compressed:
        ext = ".jpg" if image_format == "jpeg" else ".png"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpeg" else []
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]), params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {image_format} image")
        return store.types[COMPRESSED_IMAGE](header=header, format=f"rgb8; {image_format} compressed bgr8",
                                             data=np.frombuffer(buf.tobytes(), dtype=np.uint8))
    pixels = image if encoding == "rgb8" else image[..., ::-1]
    height, width = image.shape[:2]
    return store.types[IMAGE](header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                              step=width * 3, data=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))


def image_topic(camera: str, compressed: bool) -> str:
    return f"/{camera}/image_raw/compressed" if compressed else f"/{camera}/image_raw"


def _schedule_frames(num_instructions: int, num_frames: int) -> list[int]:
    """Instruction j of a video applies from frame j * T / n (instruction changes mid-video)."""
    return [j * num_frames // max(num_instructions, 1) for j in range(num_instructions)]


def write_synthetic_bag(path: str | os.PathLike, videos: list[VideoSample], *, storage: str = "sqlite3",
                        compressed: bool = False, image_format: str = "jpeg", encoding: str = "rgb8",
                        fps: float = 10.0, start_sec: int = START_SEC, instruction_topic: str | None = None,
                        ) -> SyntheticBag:
    """One bag with one camera per video, plus <bag>.gt.json and <bag>.instructions.yaml next to it."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    path = Path(path)
    store = typestore()
    period_ns = int(round(1e9 / fps))
    t0 = int(start_sec) * 1_000_000_000
    messages = []  # (log time, topic, msgtype, message)
    gt_topics, gt_instructions, entries = {}, [], []
    for k, video in enumerate(videos):
        camera = f"cam{k}"
        topic = image_topic(camera, compressed)
        T, H, W = video.frames.shape[:3]
        frames = []
        for t in range(T):
            stamp = t0 + t * period_ns
            header = header_msg(store, stamp, f"{camera}_optical_frame")
            msg = image_message(store, video.frames[t], header, compressed, image_format, encoding)
            messages.append((stamp + (k + 1) * 1_000_000, topic, COMPRESSED_IMAGE if compressed else IMAGE, msg))
            instances = [{"object_id": int(oid), "segmentation": encode_mask(video.masks[oid][t])}
                         for oid in sorted(video.masks) if video.masks[oid][t].any()]
            frames.append({"stamp": {"sec": stamp // 1_000_000_000, "nanosec": stamp % 1_000_000_000},
                           "instances": instances,
                           "targets": {ins["id"]: [int(o) for o in ins["targets_per_frame"][t]]
                                       for ins in video.instructions}})
        gt_topics[topic] = {"height": H, "width": W, "frames": frames}
        for ins, frame in zip(video.instructions, _schedule_frames(len(video.instructions), T)):
            gt_instructions.append({"id": ins["id"], "text": ins["text"], "family": ins["family"],
                                    "task": ins["task"], "camera": camera,
                                    "target_ids": [int(o) for o in ins["target_ids"]]})
            entries.append(ScheduleEntry(position=len(entries), text=ins["text"], id=ins["id"], camera=camera,
                                         frame=frame, task=ins["task"]))
            if instruction_topic:
                Instruction = store.types[INSTRUCTION]
                messages.append((t0 + frame * period_ns, instruction_topic, INSTRUCTION,
                                 Instruction(id=ins["id"], text=ins["text"], camera=camera, task=ins["task"],
                                             max_instances=0, score_threshold=-1.0)))
    messages.sort(key=lambda m: m[0])  # stable: instruction (at the stamp) before the frames (stamp + k ms)
    writer = Writer(path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
    writer.open()
    try:
        connections = {}
        for _, topic, msgtype, _ in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for log_time, topic, msgtype, msg in messages:
            writer.write(connections[topic], log_time, store.serialize_cdr(msg, msgtype))
    finally:
        writer.close()
    gt_path = path.parent / f"{path.name}.gt.json"
    gt_path.write_text(json.dumps(ground_truth_json(gt_topics, gt_instructions), separators=(",", ":")))
    schedule_path = path.parent / f"{path.name}.instructions.yaml"
    schedule_path.write_text(f"# instruction schedule of {path.name} (written by make-synthetic)\n"
                             + InstructionSchedule(entries).to_yaml())
    return SyntheticBag(bag=path, ground_truth=gt_path, schedule=schedule_path, videos=list(videos))


def make_synthetic_bags(out_dir: str | os.PathLike, *, videos: int = 1, frames: int = 12, size: int = 64,
                        cameras: int = 1, max_objects: int = 4, seed: int = 0, **bag_options) -> list[SyntheticBag]:
    """`videos` bags named synthetic_<i>, each with `cameras` synthetic videos of `frames` frames of size x size."""
    if videos < 1 or cameras < 1 or frames < 1:
        raise ValueError(f"videos, cameras and frames must be >= 1, got {videos}, {cameras}, {frames}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(videos):
        clips = [generate_video(np.random.default_rng([seed, i, k]), video_id=f"b{i}c{k}", image_size=size,
                                num_frames=frames, max_objects=max_objects) for k in range(cameras)]
        made.append(write_synthetic_bag(out / f"synthetic_{i}", clips, start_sec=START_SEC + 1000 * i,
                                        **bag_options))
    return made


__all__ = ["SyntheticBag", "write_synthetic_bag", "make_synthetic_bags", "image_message", "image_topic"]

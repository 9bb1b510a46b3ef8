"""The output bag: one instructsam_ros/msg/InstanceMaskArray per processed frame on /<camera>/instances (header =
the source image's header, written at the source message's recorded time), and optionally the overlay image
(sensor_msgs/Image rgb8) on /<camera>/overlay; sqlite3 or mcap. The message types are registered from the package's
own .msg files (types.py), so the bag carries the package's definitions and type hashes and a ROS 2 install reads
it as its own messages.

The bag is written under OUT_PARENT/.partial/<name> and renamed into place by close(), so a bag at its final
path is always complete; a leftover partial bag (from a killed run) is removed when the same bag is written again.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from instructsam_ros.message_codec import array_fields, instance_fields, rgb_image_fields
from instructsam_ros.bags.records import FrameRecord
from instructsam_ros.bags.typestore import IMAGE, INSTANCE_MASK, INSTANCE_MASK_ARRAY, typestore

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
BAG_VERSION = 8  # rosbag2 metadata version 8 (Jazzy's); rosbags writes 8 or 9 (Kilted's)


def header_msg(store, stamp_ns: int, frame_id: str):
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                  frame_id=frame_id)


def source_header(store, header):
    """A copy of a deserialised source header in this typestore (the source bag's own types may differ), keeping
    sec and nanosec exactly as recorded."""
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec)),
                  frame_id=str(header.frame_id))


def instance_array_msg(store, record: FrameRecord, header):
    """The InstanceMaskArray for a processed FrameRecord (the fields of the node's messages: message_codec)."""
    InstanceMask = store.types[INSTANCE_MASK]
    instances = [InstanceMask(**instance_fields(inst.id, inst.score, inst.state, inst.rle, record.height,
                                                record.width)) for inst in record.instances]
    return store.types[INSTANCE_MASK_ARRAY](**array_fields(
        header, record.camera, record.height, record.width, record.instruction_id, record.instruction, instances,
        keyframe=record.keyframe, frame_index=record.frame_index, processing_ms=record.processing_ms,
        latency_ms=record.latency_ms, answer=record.answer))


def rgb_image_msg(store, rgb: np.ndarray, header):
    return store.types[IMAGE](**rgb_image_fields(rgb, header))


PARTIAL_DIR = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """Where the bag that will end at `path` is written until it is complete."""
    path = Path(path)
    return path.parent / PARTIAL_DIR / path.name


class OutputBag:
    """Writes results as they come (one writer thread at a time); close() publishes the bag, abort() drops it."""

    def __init__(self, path: str | os.PathLike, cameras: list[str], storage: str = "sqlite3", overlay: bool = False,
                 version: int = BAG_VERSION):
        if storage not in STORAGES:
            raise ValueError(f"output storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"output bag {self.path} exists already; rosbag2 writers never overwrite")
        self.partial = partial_path(self.path)
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.store = typestore()
        self.writer = Writer(self.partial, version=version, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.instances = {c: self.writer.add_connection(f"/{c}/instances", INSTANCE_MASK_ARRAY, typestore=self.store)
                          for c in cameras}
        self.overlays = ({c: self.writer.add_connection(f"/{c}/overlay", IMAGE, typestore=self.store)
                          for c in cameras} if overlay else {})
        self.count = 0

    def write(self, record: FrameRecord, header, overlay_rgb: np.ndarray | None = None) -> None:
        """header: the source image header (any object with stamp.sec, stamp.nanosec, frame_id)."""
        h = source_header(self.store, header)
        msg = instance_array_msg(self.store, record, h)
        self.writer.write(self.instances[record.camera], record.log_time_ns,
                          self.store.serialize_cdr(msg, INSTANCE_MASK_ARRAY))
        if overlay_rgb is not None and record.camera in self.overlays:
            self.writer.write(self.overlays[record.camera], record.log_time_ns,
                              self.store.serialize_cdr(rgb_image_msg(self.store, overlay_rgb, h), IMAGE))
        self.count += 1

    def close(self) -> None:
        """Finish the bag and move it to its final path (a rename: atomic on one file system)."""
        self.writer.close()
        os.replace(self.partial, self.path)
        try:
            self.partial.parent.rmdir()  # the last bag of a run leaves no empty .partial behind
        except OSError:
            pass

    def abort(self) -> None:
        """Drop an incomplete bag (the replay failed)."""
        try:
            self.writer.close()
        finally:
            shutil.rmtree(self.partial, ignore_errors=True)


__all__ = ["STORAGES", "BAG_VERSION", "OutputBag", "partial_path", "instance_array_msg", "rgb_image_msg", "header_msg",
           "source_header"]

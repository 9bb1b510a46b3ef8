"""Benchmark section 3: the node's own overhead per frame, and the size of its messages.

    image message in  -> InstructSAMNode._on_image (decode, latest-frame slot)         timed: "in"
    (the model: FramePipeline.step, not timed here: its processing_ms is the model time)
    FrameResult       -> InstructSAMNode._publish (COCO RLE per mask, InstanceMaskArray, rclpy publish)  "out"

The real node is configured and activated with a real checkpoint (the model is loaded but not used), its worker
thread is stopped so this module drives the two callbacks itself, and a second node subscribes to the instances
topic so the publish goes to a real subscriber. FrameResults carry real instance masks: the 36 polygon
annotations of two COCO val2017 images (shared/realdata, 640x427 and 640x426) drawn into 640x480 frames, cycled
(shifted) to 50; without that file, synthetic discs. Message size is the CDR-serialised InstanceMaskArray vs the
raw mono8 masks (N x 480 x 640 bytes).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from instructsam_tools.benchmarks.common import FRAME_SIZE, Target, moving_shapes, time_ms
from instructsam.pipeline.frame_pipeline import FrameResult, TrackedInstance
from instructsam_ros.conversions import make_instance, make_instance_array
from instructsam_ros.msg import InstanceMaskArray
from instructsam_ros.node import RESULT_QOS, Frame, InstructSAMNode

# Real COCO instance masks, from the data shared beside the repository (run from its root); synthetic without them.
COCO = Path("../shared/realdata/refseg/coco_val2017_2img_mmdet_annotations_only/instances_val2017.json")
COUNTS = (1, 10, 50)
CAMERA = "cam"


def instance_masks(count: int, height: int = FRAME_SIZE[0], width: int = FRAME_SIZE[1]) -> tuple[np.ndarray, str]:
    """`count` realistic (H, W) bool instance masks and where they come from."""
    masks = []
    if COCO.is_file():
        from pycocotools import mask as mask_utils

        data = json.loads(COCO.read_text())
        sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
        for ann in data["annotations"]:
            if ann.get("iscrowd"):
                continue
            h, w = sizes[ann["image_id"]]
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
            canvas = np.zeros((height, width), dtype=bool)
            m = mask_utils.decode(rle).astype(bool)[:height, :width]
            canvas[:m.shape[0], :m.shape[1]] = m
            masks.append(canvas)
        source = f"{len(masks)} COCO val2017 polygon masks (shared/realdata)"
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        rng = np.random.default_rng(0)
        for _ in range(36):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 120)
            masks.append((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
        source = "36 synthetic discs (shared/realdata not found)"
    out = [np.roll(masks[i % len(masks)], 7 * (i // len(masks)), axis=1) for i in range(count)]
    return np.stack(out), source


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def run_node(checkpoint: Path, repeats: int, counts=COUNTS) -> tuple[dict, list[Target]]:
    height, width = FRAME_SIZE
    frame = moving_shapes(1, height, width)[0]
    image = Image(height=height, width=width, encoding="rgb8", step=3 * width, is_bigendian=0)
    image.data = frame.tobytes()
    context = Context()
    rclpy.init(context=context)
    node = listener = None
    try:
        node = InstructSAMNode(context=context, parameter_overrides=[
            Parameter("checkpoint", value=str(checkpoint)), Parameter("autostart", value=False),
            Parameter("cameras", value=[CAMERA]), Parameter("publish_overlay", value=False)])
        node.trigger_configure()
        node.trigger_activate()
        if node.pipeline is None:
            raise RuntimeError(f"the node did not activate: {node.node_error}")
        node._stop.set()  # this benchmark drives the callbacks itself: no worker running the model
        node._wake.set()
        node._worker.join(timeout=30)
        node.book.set("every mug left of the sink")
        received = []
        listener = rclpy.create_node("instructsam_bench_listener", context=context)
        listener.create_subscription(InstanceMaskArray, f"/{CAMERA}/instances", received.append, RESULT_QOS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        deadline = time.monotonic() + 5.0
        while node.streams[CAMERA].instances_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)

        t_in = time_ms(lambda: node._on_image(CAMERA, image), repeats, warmup=2)
        instruction = node.book.get(CAMERA)
        results, targets = {}, []
        source = ""
        for n in counts:
            masks, source = instance_masks(n, height, width)
            instances = [TrackedInstance(id=str(i + 1), score=0.9, state="tracked", mask=m, box=_box(m))
                         for i, m in enumerate(masks)]
            result = FrameResult(camera=CAMERA, frame=Frame(image.header, time.monotonic()), height=height,
                                 width=width, instruction=instruction, instances=instances, keyframe=False,
                                 frame_index=0, processing_ms=0.0, latency_ms=0.0)

            def build():
                return make_instance_array(
                    image.header, CAMERA, height, width, instruction.id, instruction.text,
                    [make_instance(i.id, i.score, i.state, i.mask) for i in instances],
                    keyframe=False, frame_index=0, processing_ms=0.0, latency_ms=0.0)

            t_build = time_ms(build, repeats)
            t_out = time_ms(lambda: node._publish(result), repeats)
            for _ in range(20):
                executor.spin_once(timeout_sec=0.01)
            size = len(serialize_message(build()))
            raw = n * height * width
            total = t_in.median + t_out.median
            results[str(n)] = {"in_ms": t_in.median, "build_ms": t_build.median,
                               "publish_ms": max(0.0, t_out.median - t_build.median), "out_ms": t_out.median,
                               "total_ms": total, "message_bytes": size, "raw_bytes": raw, "size_ratio": size / raw,
                               "in": t_in.as_dict(), "out": t_out.as_dict()}
        if not received:
            raise RuntimeError("the listener received no InstanceMaskArray: the publish path is not working")
        ten = results.get("10") or results[str(counts[len(counts) // 2])]
        targets.append(Target("node", "node overhead per frame, 640x480, 10 instances", "any", ten["total_ms"], 5.0,
                              unit="ms", note=f"in {ten['in_ms']:.2f} ms + out {ten['out_ms']:.2f} ms "
                                              f"(model time excluded)"))
        worst = max(results.values(), key=lambda r: r["size_ratio"])
        targets.append(Target("node", "RLE message size / raw mono8 masks (worst of 1/10/50 instances)", "any",
                              worst["size_ratio"] * 100, 10.0, unit="%",
                              note=", ".join(f"{n}: {r['size_ratio'] * 100:.2f} %" for n, r in results.items())))
        return {"instances": results, "masks": source, "received_messages": len(received),
                "what": " ".join(__doc__.split("\n\n")[1].split())}, targets
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        if listener is not None:
            listener.destroy_node()
        context.try_shutdown()


__all__ = ["run_node", "instance_masks"]

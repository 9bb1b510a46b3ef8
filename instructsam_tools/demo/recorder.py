"""demo_recorder: collects a camera's results (<camera>/instances), overlay frames (<camera>/overlay) and the
node's /diagnostics, writes the overlay frames as an animated GIF and summarises the run: per instruction the
result frames, instances per frame, track ids and how long each lived, latency p50/p95; dropped frames.

`python -m instructsam_tools.demo` uses the Recorder in its own process; on a robot it runs as a node and writes
its outputs when stopped (Ctrl-C / launch shutdown):

    python -m instructsam_tools.demo.recorder --ros-args -p out:=outputs/demo -p camera:=camera
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from instructsam_ros.msg import InstanceMask, InstanceMaskArray
from instructsam_tools.demo.self_score import format_self_score, frame_digest

NODE_NAME = "demo_recorder"
MAX_GIF_FRAMES = 600  # overlay frames kept (about 120 MB at 256 x 256); later ones are counted, not kept
RESULT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class Result:
    """What the summary needs of one InstanceMaskArray (masks are not kept)."""
    instruction_id: str
    instruction: str
    frame_index: int
    keyframe: bool
    stamp: float  # header stamp (the camera's clock), seconds
    arrived: float  # when the recorder got it (wall clock, the same clock as the stamp on one machine)
    latency_ms: float  # the node's: image receipt -> result published
    processing_ms: float
    instances: list[tuple[str, int, float]]  # (track id, state, score)
    answer: str = ""  # what the model wrote (models that answer first; else "")
    frame_key: tuple[int, int] = (0, 0)  # the header stamp as (sec, nanosec): finds the camera frame it answers
    masks: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # visible track id -> (RLE, height, width)

    @property
    def visible(self) -> list[str]:
        return [i for i, state, _ in self.instances if state != InstanceMask.STATE_LOST]


def _rgb(msg: Image) -> np.ndarray:
    """An rgb8 Image's pixels as an (H, W, 3) view (row padding dropped)."""
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)


def _stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _stamp_key(header) -> tuple[int, int]:
    """The stamp exactly, as (sec, nanosec): a result's header carries its camera frame's."""
    return header.stamp.sec, header.stamp.nanosec


class Recorder(Node):
    def __init__(self, camera: str = "camera", max_gif_frames: int = MAX_GIF_FRAMES, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.camera = self.declare_parameter("camera", camera, ParameterDescriptor(
            description="camera name: records /<camera>/instances and /<camera>/overlay")).value
        self.max_gif_frames = int(max_gif_frames)
        self.results: list[Result] = []
        self.overlays: list[np.ndarray] = []
        self.overlay_count = 0
        self.camera_frames = 0  # frames of /<camera>/image_raw seen here (what the camera sent, roughly)
        self.frame_digests: dict[tuple[int, int], str] = {}  # camera frame stamp -> digest of its pixels
        self.node_stats: dict[str, str] = {}  # the node's latest diagnostics for this camera
        self.diagnostics_at = 0.0  # monotonic time of the latest
        self.create_subscription(InstanceMaskArray, f"/{self.camera}/instances", self._on_result, RESULT_QOS)
        self.create_subscription(Image, f"/{self.camera}/overlay", self._on_overlay, RESULT_QOS)
        self.create_subscription(Image, f"/{self.camera}/image_raw", self._on_frame, qos_profile_sensor_data)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 20)

    def _on_result(self, msg: InstanceMaskArray) -> None:
        self.results.append(Result(
            instruction_id=msg.instruction_id, instruction=msg.instruction, frame_index=int(msg.frame_index),
            keyframe=bool(msg.keyframe), stamp=_stamp(msg.header), arrived=time.time(),
            latency_ms=float(msg.latency_ms), processing_ms=float(msg.processing_ms),
            instances=[(i.id, int(i.state), float(i.score)) for i in msg.instances], answer=msg.answer,
            frame_key=_stamp_key(msg.header),
            masks={i.id: (i.rle_counts, int(i.mask_height), int(i.mask_width)) for i in msg.instances
                   if i.state != InstanceMask.STATE_LOST}))

    def _on_overlay(self, msg: Image) -> None:
        self.overlay_count += 1
        if len(self.overlays) >= self.max_gif_frames:
            return
        if msg.encoding != "rgb8":
            self.get_logger().warning(f"overlay encoding {msg.encoding!r} is not rgb8: frame skipped")
            return
        self.overlays.append(_rgb(msg).copy())

    def _on_frame(self, msg: Image) -> None:
        self.camera_frames += 1
        if msg.encoding == "rgb8":
            self.frame_digests[_stamp_key(msg.header)] = frame_digest(_rgb(msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(f": {self.camera}"):
                self.node_stats = {v.key: v.value for v in status.values}
                self.diagnostics_at = time.monotonic()


# ---- outputs ----------------------------------------------------------------------------------------------------
def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> int:
    """Write an animated, looping GIF and return the number of frames it decodes to.

    Each frame gets its own 255-colour palette (Pillow's fast octree, no dithering): about 4 ms a frame at 256 px,
    where the median-cut palette that imageio (Pillow's default) uses takes about 40 times as long."""
    from PIL import Image as PILImage

    if not frames:
        raise ValueError("no overlay frames to write: the node published no overlay images")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [PILImage.fromarray(np.ascontiguousarray(f, dtype=np.uint8)).quantize(
        colors=255, method=PILImage.Quantize.FASTOCTREE, dither=PILImage.Dither.NONE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000.0 / fps)), loop=0)
    with PILImage.open(path) as gif:
        return int(gif.n_frames)


def _percentiles(values) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}


def summarize(results: list[Result], script: list[dict] | None = None, node_stats: dict | None = None,
              camera_frames: int = 0, overlay_frames: int = 0, self_scores: dict | None = None) -> dict:
    """Per instruction (script order first, then any other in order of appearance): result frames, instances per
    frame, keyframes, tracks (frames visible, first -> last seen in seconds), latency percentiles, and the
    self-score against the camera's ground truth where `self_scores` (demo.self_score) has one."""
    order = [s["id"] for s in script or []]
    texts = {s["id"]: s["text"] for s in script or []}
    kinds = {s["id"]: s.get("kind", "") for s in script or []}
    for r in results:
        if r.instruction_id not in texts:
            order.append(r.instruction_id)
            texts[r.instruction_id] = r.instruction
    instructions = []
    for iid in order:
        mine = [r for r in results if r.instruction_id == iid]
        counts = [len(r.visible) for r in mine]
        seen: Counter[str] = Counter()
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for r in mine:
            for tid in r.visible:
                seen[tid] += 1
                first.setdefault(tid, r.stamp)
                last[tid] = r.stamp
        tracks = [{"id": tid, "frames": seen[tid], "seconds": round(last[tid] - first[tid], 2)}
                  for tid in sorted(seen, key=lambda t: (first[t], t))]
        instructions.append({
            "id": iid, "text": texts[iid], "kind": kinds.get(iid, ""), "results": len(mine),
            "keyframes": sum(r.keyframe for r in mine),
            "instances_per_frame": ({"mean": round(float(np.mean(counts)), 2), "min": int(min(counts)),
                                     "max": int(max(counts))} if counts else None),
            "empty_results": sum(c == 0 for c in counts),
            "tracks": tracks,
            "latency_ms": _percentiles([r.latency_ms for r in mine]),
            "answers": sorted({r.answer for r in mine if r.answer}),
            **({"self_score": self_scores[iid]} if self_scores and iid in self_scores else {}),
        })
    stats = node_stats or {}
    return {
        "results": len(results),
        "overlay_frames": overlay_frames,
        "camera_frames_seen": camera_frames,
        "latency_ms": _percentiles([r.latency_ms for r in results]),
        "end_to_end_ms": _percentiles([(r.arrived - r.stamp) * 1000.0 for r in results]),
        "processing_ms": _percentiles([r.processing_ms for r in results]),
        "node": {k: stats[k] for k in ("received", "processed", "dropped", "bad_frames", "errors", "last_error")
                 if k in stats},
        "instructions": instructions,
    }


def _ms(p: dict | None) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f} ms" if p else "-"


def format_summary(summary: dict, max_tracks: int = 8) -> str:
    lines = []
    for k, ins in enumerate(summary["instructions"], 1):
        kind = f" [{ins['kind']}]" if ins["kind"] else ""
        lines.append(f"{k}. {ins['id']}{kind} {ins['text']!r}")
        if not ins["results"]:
            lines.append("     no results")
            continue
        ipf = ins["instances_per_frame"]
        lines.append(f"     {ins['results']} result frames ({ins['keyframes']} keyframes); instances per frame: "
                     f"mean {ipf['mean']:.2f}, min {ipf['min']}, max {ipf['max']}; empty frames: "
                     f"{ins['empty_results']}; latency p50/p95 {_ms(ins['latency_ms'])}")
        tracks = ins["tracks"]
        shown = ", ".join(f"{t['id']} ({t['frames']} fr, {t['seconds']:.1f} s)" for t in tracks[:max_tracks])
        more = f", +{len(tracks) - max_tracks} more" if len(tracks) > max_tracks else ""
        lines.append(f"     track ids: {shown or 'none'}{more}")
        if ins.get("answers"):
            lines.append(f"     the model wrote: {' | '.join(repr(a) for a in ins['answers'])}")
        if ins.get("self_score"):
            lines.append(f"     {format_self_score(ins['self_score'])}")
    node = summary["node"]
    lines.append(f"results: {summary['results']} frames; latency (node: image receipt -> result) p50/p95 "
                 f"{_ms(summary['latency_ms'])}; camera stamp -> recorder {_ms(summary['end_to_end_ms'])}; "
                 f"model time per frame {_ms(summary['processing_ms'])}")
    if node:
        lines.append(f"camera frames: {summary['camera_frames_seen']} seen by the recorder; node (last diagnostics): "
                     f"received {node.get('received', '?')}, processed "
                     f"{node.get('processed', '?')}, dropped {node.get('dropped', '?')} (newer frame arrived first), "
                     f"bad {node.get('bad_frames', '?')}, errors {node.get('errors', '?')}"
                     + (f"; last error: {node['last_error']}" if node.get("last_error") else ""))
    else:
        lines.append("node: no diagnostics received")
    return "\n".join(lines)


def write_outputs(recorder: Recorder, out: Path, fps: float, script: list[dict] | None = None,
                  extra: dict | None = None, self_scores: dict | None = None) -> tuple[dict, Path | None]:
    """The summary (also as out/summary.json) and out/overlay.gif (when there are overlay frames)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(recorder.results, script, recorder.node_stats, recorder.camera_frames,
                        recorder.overlay_count, self_scores)
    gif = None
    if recorder.overlays:
        gif = out / "overlay.gif"
        summary["gif"] = {"path": str(gif), "frames": write_gif(recorder.overlays, gif, fps)}
    summary.update(extra or {})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, gif


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = Recorder()
    out = Path(node.declare_parameter("out", "outputs/demo").value)
    fps = float(node.declare_parameter("fps", 8.0).value)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        summary, gif = write_outputs(node, out, fps)
        print(format_summary(summary))
        print(f"GIF: {gif} ({summary['gif']['frames']} frames)" if gif else "no overlay frames: no GIF written")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""soak: the node under sustained load. Starts instructsam_node (as the launch file does) with three cameras, two
raw rgb8 and one JPEG-compressed, publishes frames on all three at the chosen rate from a separate process, and
samples the node's resident memory and its diagnostics (received, processed, dropped, errors per camera) until
the duration is over. Writes OUT/soak.json (every sample), OUT/soak.png (RSS and rates over time) and prints a
summary: RSS at start and end and its growth per hour after warm-up, drops and errors.

    python -m instructsam_tools.benchmarks.soak [--duration 3600] [--fps 30] [--size 640x480] [--checkpoint DIR] [--out DIR]

Not a test: an hour of load is a command people run (BENCHMARKS.md records its last result).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CAMERAS = {"cam_a": False, "cam_b": False, "cam_c": True}  # name -> compressed
NODE = "/instructsam_node"


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"--size {text!r}: at least 16x16")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of load (default: one hour)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second on each camera")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="frame size WIDTHxHEIGHT")
    parser.add_argument("--checkpoint", default="checkpoints/instructsam-tiny")
    parser.add_argument("--params-file", default="config/instructsam.yaml")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--threads", type=int, default=0, help="the node's torch threads (0: torch's default)")
    parser.add_argument("--dds-profile", default="config/fastdds_large_images.xml",
                        help="Fast DDS profile for the cameras and the node (README: large images; '' for none)")
    parser.add_argument("--out", default="outputs/soak")
    return parser


class Feeder:
    """The cameras and the sampler, in one rclpy node of this process (the node under test is another)."""

    def __init__(self, size: tuple[int, int], fps: float):
        import cv2
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        rclpy.init()
        self.node = rclpy.create_node("soak_feeder")
        width, height = size
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        self.raw = [Image(height=height, width=width, encoding="rgb8", step=width * 3, data=f.tobytes())
                    for f in frames]
        self.jpeg = [CompressedImage(format="jpeg", data=cv2.imencode(".jpg", f)[1].tobytes()) for f in frames]
        self.pubs = {cam: self.node.create_publisher(CompressedImage if compressed else Image,
                                                     f"/{cam}/image_raw" + ("/compressed" if compressed else ""),
                                                     qos_profile_sensor_data)
                     for cam, compressed in CAMERAS.items()}
        self.sent = {cam: 0 for cam in CAMERAS}
        self.latest: dict[str, dict[str, str]] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_timer(1.0 / fps, self._tick)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            name = status.name.rsplit(": ", 1)[-1]
            self.latest[name] = dict({v.key: v.value for v in status.values}, _message=status.message)

    def _tick(self) -> None:
        for cam, pub in self.pubs.items():
            k = self.sent[cam] % 4
            msg = self.jpeg[k] if CAMERAS[cam] else self.raw[k]
            msg.header.frame_id = f"{cam}-{self.sent[cam]}"
            msg.header.stamp = self.node.get_clock().now().to_msg()
            pub.publish(msg)
            self.sent[cam] += 1

    def instruct(self, text: str) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = self.node.create_publisher(String, f"{NODE}/instruction_text", latched)
        self.instruction_pub.publish(String(data=text))

    def close(self) -> None:
        import rclpy
        self.node.destroy_node()
        rclpy.try_shutdown()


def start_node(args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "instructsam_ros.node", "--ros-args", "--params-file", args.params_file,
           "-p", f"checkpoint:={args.checkpoint}", "-p", f"cameras:=[{', '.join(CAMERAS)}]",
           "-p", f"num_threads:={args.threads}", "-p", "diagnostics_period:=1.0"]
    for cam, compressed in CAMERAS.items():
        cmd += ["-p", f"{cam}.compressed:={'true' if compressed else 'false'}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")


def growth_per_hour(samples: list[dict], warmup: float) -> float | None:
    """Least-squares RSS slope (MB per hour) over the samples after `warmup` seconds."""
    points = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= warmup]
    if len(points) < 3:
        return None
    t, rss = np.array(points).T
    return float(np.polyfit(t, rss, 1)[0] * 3600.0)


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s["t"] for s in samples]) / 60.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(t, [s["rss_mb"] for s in samples], color="tab:blue")
    top.set_ylabel("node RSS (MB)")
    top.set_title(title)
    for cam in CAMERAS:
        bottom.plot(t, [float(s["cameras"].get(cam, {}).get("processed_rate_hz", 0.0)) for s in samples], label=cam)
    bottom.set_ylabel("processed frames/s")
    bottom.set_xlabel("minutes")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import psutil
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dds_profile:  # before rclpy starts in this process, and inherited by the node's
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(args.dds_profile).resolve())
    node = start_node(args)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in node.stdout), daemon=True).start()
    feeder = Feeder(args.size, args.fps)
    samples: list[dict] = []
    try:
        deadline = time.monotonic() + 180.0
        while not any("active: model" in line for line in lines):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the node did not become active:\n" + "\n".join(lines[-30:]))
            time.sleep(0.2)
        feeder.instruct("all the objects")
        process = psutil.Process(node.pid)
        import rclpy
        start = time.monotonic()
        next_sample = start
        with tqdm(total=int(args.duration), unit="s", desc="soak") as bar:
            while (now := time.monotonic()) - start < args.duration:
                rclpy.spin_once(feeder.node, timeout_sec=0.002)
                if now >= next_sample:
                    if node.poll() is not None:
                        raise RuntimeError(f"the node exited with {node.returncode}:\n" + "\n".join(lines[-30:]))
                    samples.append({"t": round(now - start, 2), "rss_mb": process.memory_info().rss / 1e6,
                                    "sent": dict(feeder.sent),
                                    "cameras": {c: dict(feeder.latest.get(c, {})) for c in CAMERAS}})
                    bar.update(int(now - start) - bar.n)
                    next_sample += args.sample_every
    finally:
        feeder.close()
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
    last = samples[-1]["cameras"] if samples else {}
    summary = {
        "duration_s": args.duration, "fps_per_camera": args.fps, "size": list(args.size),
        "rss_mb_start": samples[0]["rss_mb"] if samples else None,
        "rss_mb_end": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "rss_growth_mb_per_hour_after_warmup": growth_per_hour(samples, warmup=min(300.0, args.duration / 4)),
        "cameras": {c: {k: last.get(c, {}).get(k) for k in ("received", "processed", "dropped", "bad_frames",
                                                            "errors", "latency_p50_ms", "latency_p95_ms")}
                    | {"sent": samples[-1]["sent"][c] if samples else 0} for c in CAMERAS},
        "node_exit_code": node.returncode, "error_lines": sum("[ERROR]" in line for line in lines),
        "first_error_lines": [line for line in lines if "[ERROR]" in line][:3],
    }
    (out / "soak.json").write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    plot(samples, out / "soak.png", f"soak: 3 cameras at {args.fps:g} fps, {args.size[0]}x{args.size[1]}")
    print(json.dumps(summary, indent=1))
    print(f"soak: {out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if node.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

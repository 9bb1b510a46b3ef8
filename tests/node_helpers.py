"""Running instructsam_node as a separate process, exactly as launch/instructsam.launch.py starts it
(`--ros-args --params-file config/instructsam.yaml -p key:=value`), and a test-side rclpy client."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "instructsam.yaml"
NODE = "/instructsam_node"


def param_arg(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """`python -m instructsam_ros.node --ros-args --params-file ... -p ...`, its output collected line by line."""

    def __init__(self, params: dict[str, Any], params_file: Path = PARAMS_FILE):
        self.cmd = [sys.executable, "-m", "instructsam_ros.node", "--ros-args", "--params-file", str(params_file)]
        for key, value in params.items():
            self.cmd += ["-p", f"{key}:={param_arg(value)}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0",
                   RCUTILS_LOGGING_BUFFERED_STREAM="0", HF_HUB_DISABLE_PROGRESS_BARS="1")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def mark(self) -> int:
        return len(self.lines)

    def output(self, since: int = 0) -> str:
        return "\n".join(self.lines[since:])

    def wait_for(self, text: str, since: int = 0, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines[since:]):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the last lines
                return any(text in line for line in self.lines[since:])
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


@contextlib.contextmanager
def active_node(params: dict[str, Any]):
    """A NodeProcess that reached `active` (fails with its output otherwise), stopped at the end with exit 0."""
    proc = NodeProcess(params)
    try:
        assert proc.wait_for("active: model", timeout=120), f"the node did not become active:\n{proc.output()}"
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, f"the node exited with {code}:\n{proc.output()[-3000:]}"


def reported(client: "Client", node: NodeProcess, expected: str, mark: int, diag_mark: int,
             timeout: float = 10.0) -> bool:
    """`expected` appeared in the node's log after `mark`, or (a camera's error lines are rate-limited) as a
    last_error in the diagnostics received after index `diag_mark`."""
    def seen() -> bool:
        return expected in node.output(mark) or any(
            expected in v.value for msg in client.diagnostics[diag_mark:] for st in msg.status for v in st.values
            if v.key == "last_error")
    return client.spin_until(seen, timeout)


class Client:
    """A test-side rclpy node: publishes images and instructions, collects the node's outputs."""

    def __init__(self, cameras: dict[str, bool]):
        """cameras: name -> compressed."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from instructsam_ros.msg import InstanceMaskArray, Instruction
        from instructsam_ros.srv import SetInstruction

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.results: dict[str, list] = {}
        self.overlays: dict[str, list] = {}
        self.image_pubs = {}
        for cam, compressed in cameras.items():
            self.results[cam], self.overlays[cam] = [], []
            self.node.create_subscription(InstanceMaskArray, f"/{cam}/instances", self.results[cam].append, 50)
            self.node.create_subscription(Image, f"/{cam}/overlay", self.overlays[cam].append, 10)
            topic = f"/{cam}/image_raw/compressed" if compressed else f"/{cam}/image_raw"
            self.image_pubs[cam] = self.node.create_publisher(CompressedImage if compressed else Image, topic,
                                                              qos_profile_sensor_data)
        self.diagnostics: list = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.instruction_pub = self.node.create_publisher(Instruction, f"{NODE}/instruction", latched)
        self.text_pub = self.node.create_publisher(String, f"{NODE}/instruction_text", latched)
        self.set_instruction = self.node.create_client(SetInstruction, f"{NODE}/set_instruction")
        self.set_parameters = self.node.create_client(SetParameters, f"{NODE}/set_parameters")
        self.change_state = self.node.create_client(ChangeState, f"{NODE}/change_state")
        self.get_state = self.node.create_client(GetState, f"{NODE}/get_state")

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def call(self, client, request, timeout: float = 30.0, attempts: int = 1):
        """attempts > 1 for read-only services only: a request sent just as the service is discovered can go
        unanswered (its response reader not matched yet), and is then sent again."""
        assert self.spin_until(client.service_is_ready, timeout), f"service {client.srv_name} is not available"
        for _ in range(attempts):
            future = client.call_async(request)
            if self.spin_until(future.done, timeout / attempts):
                return future.result()
        raise AssertionError(f"no response from {client.srv_name}")

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState
        return self.call(self.get_state, GetState.Request(), attempts=3).current_state.label

    def transition(self, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        return self.call(self.change_state, ChangeState.Request(transition=Transition(id=transition_id))).success

    def set_params(self, **values):
        """Set node parameters over the parameter service; returns the SetParametersResult list."""
        from rclpy.parameter import Parameter
        from rcl_interfaces.srv import SetParameters
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return self.call(self.set_parameters, request).results

    def diagnostic(self, name_suffix: str, where: Callable[[dict], bool] = lambda values: True, since: int = 0,
                   timeout: float = 5.0) -> dict[str, str]:
        """Key/values (+ _level, _message) of the first DiagnosticStatus named `...name_suffix` that satisfies
        `where`, among the diagnostics received after index `since` (waiting for one up to `timeout`)."""
        found: list[dict] = []

        def match() -> bool:
            for msg in self.diagnostics[since:]:
                for status in msg.status:
                    if status.name.endswith(name_suffix):
                        level = status.level
                        values = dict({v.key: v.value for v in status.values}, _message=status.message,
                                      _level=level[0] if isinstance(level, bytes) else int(level))
                        if where(values):
                            found.append(values)
                            return True
            return False

        assert self.spin_until(match, timeout), f"no diagnostics for {name_suffix!r} as expected"
        return found[0]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def serve_one_instruction(params: dict[str, Any], text: str, num_frames: int = 3, camera: str = "front",
                          timeout: float = 60.0) -> tuple[list, dict]:
    """Start the node (`params`), set one instruction on `camera` through the service, publish `num_frames` random
    60x80 frames one at a time, each waited for. Returns the InstanceMaskArray results and the node's diagnostics
    values once active."""
    from instructsam_ros.msg import Instruction
    from instructsam_ros.srv import SetInstruction

    with active_node(params):
        client = Client({camera: False})
        try:
            assert client.spin_until(lambda: client.image_pubs[camera].get_subscription_count() > 0, 20)
            res = client.call(client.set_instruction, SetInstruction.Request(
                instruction=Instruction(id="one", text=text, camera=camera)))
            assert res.success, res.message
            results = client.results[camera]
            images = np.random.default_rng(0).integers(0, 256, (num_frames, 60, 80, 3), dtype=np.uint8)
            for t, image in enumerate(images):
                start = len(results)
                client.image_pubs[camera].publish(rgb_image_msg(image, f"f{t}"))
                assert client.spin_until(lambda: len(results) > start, timeout), f"no result for frame {t}"
            return list(results), client.diagnostic(": node", lambda v: v["state"] == "active")
        finally:
            client.close()


def rgb_image_msg(image: np.ndarray, frame_id: str, stamp: tuple[int, int] = (0, 0)):
    from sensor_msgs.msg import Image
    msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", step=image.shape[1] * 3,
                data=image.tobytes())
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def png_image_msg(image: np.ndarray, frame_id: str, stamp: tuple[int, int] = (0, 0)):
    import cv2
    from sensor_msgs.msg import CompressedImage
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    assert ok
    msg = CompressedImage(format="png", data=buf.tobytes())
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def frames(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """A short synthetic sequence: a few coloured shapes drifting over a textured background."""
    import cv2
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    shapes = [(rng.integers(5, width - 5), rng.integers(5, height - 5), rng.integers(4, max(5, height // 4)),
               tuple(int(c) for c in rng.integers(80, 256, 3))) for _ in range(3)]
    out = []
    for t in range(count):
        img = background.copy()
        for i, (x, y, r, colour) in enumerate(shapes):
            cv2.circle(img, (int(x) + 2 * t * (i - 1), int(y) + t), int(r), colour, -1)
        out.append(img)
    return out

"""instructsam_node: a lifecycle node that segments, in every camera stream, the set of instances the
current instruction refers to, and tracks them.

    python -m instructsam_ros.node --ros-args --params-file config/instructsam.yaml [-p key:=value ...]

Lifecycle (yolo_ros style): configure checks the parameters and the checkpoint path and creates the
publishers, the instruction topics and the service; activate loads the model, builds the frame
pipeline and subscribes to the cameras; deactivate unsubscribes and releases the model; cleanup
destroys the rest. With autostart (default) the node configures and activates itself.

Interface (camera names come from the `cameras` parameter):
    subscribes  <camera>.image_topic          sensor_msgs/Image or CompressedImage (sensor-data QoS, depth 1)
                ~/instruction                 instructsam_ros/Instruction      (RELIABLE + TRANSIENT_LOCAL)
                ~/instruction_text            std_msgs/String, for every camera (RELIABLE + TRANSIENT_LOCAL)
    serves      ~/set_instruction             instructsam_ros/SetInstruction
    publishes   <camera>/instances            instructsam_ros/InstanceMaskArray
                <camera>/overlay              sensor_msgs/Image rgb8 (publish_overlay)
                /diagnostics                  diagnostic_msgs/DiagnosticArray (every diagnostics_period)

All work that is not ROS lives in the runtime library: decoding (instructsam.pipeline.image_decode),
instruction state (InstructionBook), model + tracking + scheduling (FramePipeline), drawing (pipeline.drawing).
Callbacks only decode and submit; one worker thread runs the model, so the executor never blocks on it.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, Node, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from instructsam_ros.bags.typestore import INSTRUCTION, STRING, typestore
from instructsam.errors import CheckpointError, CheckpointNotFoundError, ImageInputError, InstructSAMInputError
from instructsam.loading import check_checkpoint, load_model
from instructsam.loading import resolve_checkpoint as find_checkpoint
from instructsam.pipeline.image_decode import decode_image_message
from instructsam.pipeline.instructions import InstructionBook, InstructionRejected, quote_short
from instructsam_ros.conversions import make_instance, make_instance_array, overlay_message
from instructsam_ros.msg import InstanceMaskArray, Instruction
from instructsam_ros.parameters import (
    ACTIVATE, BY_NAME, CONFIGURE, PARAMS, PIPELINE_SETTINGS, RUNTIME, default_image_topic,
)
from instructsam_ros.srv import SetInstruction

NODE_NAME = "instructsam_node"
INSTRUCTION_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
RESULT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Error lines per camera: at most LOG_BURST in any LOG_INTERVAL_SECONDS window, whatever their text (the rest are
# counted and the count is logged with the next line), so a camera sending varied garbage cannot flood the log.
LOG_INTERVAL_SECONDS = 5.0
LOG_BURST = 5


@dataclass
class Frame:
    """What travels with an image through the pipeline (FramePipeline's opaque `frame`)."""
    header: Any
    received: float
    image: Any = None  # kept only for the overlay


@dataclass
class CameraStream:
    """One camera's ROS endpoints and the counters the node itself keeps (the pipeline keeps the rest)."""
    name: str
    topic: str
    compressed: bool
    instances_pub: Any = None
    overlay_pub: Any = None
    subscription: Any = None
    reliability: str = ""  # of the current subscription: "reliable" | "best_effort"
    subscribed_at: float = 0.0
    received: int = 0      # image messages that arrived
    bad_frames: int = 0    # refused by the decoder
    published: int = 0     # InstanceMaskArrays sent
    errors: int = 0        # bad frames, rejected instructions, failed steps
    last_error: str = ""
    log_window: float = -LOG_INTERVAL_SECONDS  # start of the current logging window
    logged: int = 0        # error lines logged in that window
    suppressed: int = 0    # errors not logged since the last line
    mark: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # (time, received, published, errors) at the last diagnostics


def resolve_checkpoint(path: str) -> Path:
    """The `checkpoint` parameter: the working directory, then the package share directory (a colcon install),
    then the source checkout (instructsam.loading.resolve_checkpoint)."""
    if not path.strip():
        raise CheckpointNotFoundError("parameter 'checkpoint' is empty: set it to an InstructSAM checkpoint directory")
    try:
        from ament_index_python.packages import get_package_share_directory
        search = [get_package_share_directory("instructsam_ros")]
    except Exception:  # not installed with colcon (development checkout): no share directory
        search = []
    return find_checkpoint(path, search)


def _descriptor(p) -> ParameterDescriptor:
    d = ParameterDescriptor(name=p.name, description=p.description + (f" (one of {', '.join(p.choices)})"
                                                                        if p.choices else ""))
    if p.range is not None:
        if isinstance(p.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]), to_value=float(p.range[1]))]
        else:
            d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]))]
    return d


class InstructSAMNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.streams: dict[str, CameraStream] = {}
        self.book: InstructionBook | None = None
        self.model = None
        self.pipeline = None
        self.device = ""
        self.node_error = ""  # why the last lifecycle transition failed ("" after a successful one)
        self.last_error = ""  # the last error not tied to a camera (e.g. an instruction for an unknown camera)
        self._endpoints: list = []  # instruction subscriptions + service (configure .. cleanup)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._configured = False
        # Diagnostics run in every state, so a node that failed to configure still says why.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self._param("diagnostics_period")), self._publish_diagnostics)

    def state_label(self) -> str:
        """'unconfigured', 'inactive', 'active', ... (rclpy has no public getter for the current state)."""
        return self._state_machine.current_state[1]

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            # fail early and clearly (config, weight headers, tokenizer); the weights load on activate
            check_checkpoint(resolve_checkpoint(self._param("checkpoint")), self._param("sam3_checkpoint") or None)
            self.streams = self._make_streams()
        except (CheckpointError, ValueError) as err:
            return self._fail("configure", err)
        overlay = bool(self._param("publish_overlay"))
        for s in self.streams.values():
            s.instances_pub = self.create_lifecycle_publisher(InstanceMaskArray, f"{s.name}/instances", RESULT_QOS)
            if overlay:
                s.overlay_pub = self.create_lifecycle_publisher(Image, f"{s.name}/overlay", RESULT_QOS)
        self.book = InstructionBook(list(self.streams), max_chars=int(self._param("max_instruction_chars")))
        self._endpoints = [
            # raw: decoded here (_decode_instruction), where rclpy would cut a string at a NUL and hide bad UTF-8
            self.create_subscription(Instruction, "~/instruction", self._on_instruction, INSTRUCTION_QOS, raw=True),
            self.create_subscription(String, "~/instruction_text", self._on_instruction_text, INSTRUCTION_QOS,
                                     raw=True),
            self.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction),
        ]
        self._configured = True
        self.node_error = ""
        cams = ", ".join(f"{s.name} <- {s.topic}{' (compressed)' if s.compressed else ''}"
                         for s in self.streams.values())
        self.get_logger().info(f"configured: cameras {cams}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load_model()
        except Exception as err:  # a bad checkpoint, device or dtype: stay inactive and say why
            return self._fail("activate", err)
        for s in self.streams.values():
            self._subscribe(s)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="instructsam-worker", daemon=True)
        self._worker.start()
        self.node_error = ""
        self.get_logger().info(f"active: model {self._param('checkpoint')!r} on {self.device}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("inactive: model released")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._destroy_endpoints()
        self.node_error = self.last_error = ""  # the errors of the configuration that ended
        self.get_logger().info("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._destroy_endpoints()
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, transition: str, err: Exception) -> TransitionCallbackReturn:
        self.node_error = f"{transition} failed: {err}"
        self.get_logger().error(self.node_error)
        return TransitionCallbackReturn.FAILURE

    def _make_streams(self) -> dict[str, CameraStream]:
        names = list(self._param("cameras"))
        if not names or len(set(names)) != len(names):
            raise ValueError(f"parameter 'cameras' must list distinct camera names, got {names}")
        streams = {}
        for name in names:
            if not name.isidentifier() or not name.isascii():
                raise ValueError(f"camera name {name!r} is not a valid ROS name token (letters, digits, underscore)")
            compressed = self._declared(f"{name}.compressed", False)
            topic = self._declared(f"{name}.image_topic", "") or default_image_topic(name, compressed)
            streams[name] = CameraStream(name=name, topic=topic, compressed=bool(compressed))
        return streams

    def _declared(self, name: str, default):
        if not self.has_parameter(name):
            self.declare_parameter(name, default, ParameterDescriptor(name=name))
        return self.get_parameter(name).value

    def _destroy_endpoints(self) -> None:
        for s in self.streams.values():
            for pub in (s.instances_pub, s.overlay_pub):
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
            s.instances_pub = s.overlay_pub = None
        for endpoint in self._endpoints:
            (self.destroy_service if hasattr(endpoint, "srv_type") else self.destroy_subscription)(endpoint)
        self._endpoints = []
        self._configured = False

    # ---- the model ----------------------------------------------------------------------------------------------
    def _load_model(self) -> None:
        from instructsam.pipeline.frame_pipeline import FramePipeline, PipelineSettings

        model = load_model(resolve_checkpoint(self._param("checkpoint")), self._param("device"),
                           self._param("dtype"), int(self._param("num_threads")),
                           sam3=self._param("sam3_checkpoint") or None)
        settings = PipelineSettings(**{name: self._param(name) for name in PIPELINE_SETTINGS})
        # the node's InstructionBook lives from configure to cleanup, so instructions survive deactivate
        self.pipeline = FramePipeline(model, list(self.streams), settings, instructions=self.book)
        self.model = model
        self.device = f"{model.device} ({str(model.dtype).removeprefix('torch.')})"

    # ---- image subscriptions ----------------------------------------------------------------------------------
    def _wanted_reliability(self, stream: CameraStream) -> str:
        """The image_qos.reliability parameter, or with "auto" the publishers' own (as rosbag2 records): reliable
        when every publisher offers it (large frames then arrive whole), best effort otherwise (matches any)."""
        setting = self._param("image_qos.reliability")
        if setting != "auto":
            return setting
        offered = [info.qos_profile.reliability for info in self.get_publishers_info_by_topic(stream.topic)]
        reliable = bool(offered) and all(r == ReliabilityPolicy.RELIABLE for r in offered)
        return "reliable" if reliable else "best_effort"

    def _subscribe(self, stream: CameraStream) -> None:
        reliability = self._wanted_reliability(stream)
        qos = QoSProfile(depth=int(self._param("image_qos.depth")), history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE,
                         reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT))
        if stream.subscription is not None:
            self.destroy_subscription(stream.subscription)
        stream.subscription = self.create_subscription(
            CompressedImage if stream.compressed else Image, stream.topic,
            lambda msg, name=stream.name: self._on_image(name, msg), qos)
        stream.reliability, stream.subscribed_at = reliability, time.monotonic()

    def _follow_publishers(self) -> None:
        """With image_qos.reliability auto: re-subscribe a camera whose publishers changed their reliability."""
        if self._param("image_qos.reliability") != "auto":
            return
        for s in self.streams.values():
            if s.subscription is not None and self._wanted_reliability(s) != s.reliability:
                self._subscribe(s)
                self.get_logger().info(f"[{s.name}] publishers on {s.topic} changed: subscribed {s.reliability}")

    def _release(self) -> None:
        """Stop the worker, drop the subscriptions, and free the model and the tracker state."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=60.0)
            self._worker = None
        for s in self.streams.values():
            if s.subscription is not None:
                self.destroy_subscription(s.subscription)
                s.subscription = None
        if self.model is None:
            return
        if self.book is not None:
            self.book.model_check = None  # nothing to check against until a model loads again
        if self.pipeline is not None:
            self.pipeline.reset()
        model_ref = weakref.ref(self.model)
        self.pipeline = self.model = None
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        self.device = ""
        if model_ref() is not None:  # someone still holds the model: its memory is not free
            self.get_logger().warning("the model is still referenced after release; its memory was not freed")

    # ---- images -> pipeline -> results -----------------------------------------------------------------------
    def _on_image(self, camera: str, msg) -> None:
        received = time.monotonic()
        stream = self.streams[camera]
        stream.received += 1
        pipeline = self.pipeline
        if pipeline is None or self.book.get(camera) is None:
            return  # nothing asked of this camera: do not spend time decoding
        try:
            image = decode_image_message(msg, int(self._param("max_image_pixels")))
        except ImageInputError as err:
            stream.bad_frames += 1
            self._report(camera, f"bad image on {stream.topic}: {err}")
            return
        frame = Frame(msg.header, received, image if stream.overlay_pub is not None else None)
        try:
            pipeline.submit(camera, image, frame, received)
        except InstructSAMInputError as err:
            stream.bad_frames += 1
            self._report(camera, f"image refused: {err}")
            return
        self._wake.set()

    def _work(self) -> None:
        """The worker thread: process the newest frame of each camera in turn, publish, repeat."""
        def idle() -> bool:
            self._wake.wait(0.05)
            self._wake.clear()
            return True

        def publish(result) -> bool:
            try:
                self._publish(result)
            except Exception as err:
                self._report(result.camera, f"could not publish a result: {type(err).__name__}: {err}")
            return True

        def failed(failure) -> None:  # the pipeline counted it and reset that camera: report, keep serving
            err = failure.error
            self._report(failure.camera, f"frame skipped: {type(err).__name__}: {err}")
            if not isinstance(err, InstructSAMInputError):
                time.sleep(0.1)  # an unexpected failure: do not spin on it

        self.pipeline.run_worker(lambda: not self._stop.is_set(), idle, publish, failed)

    def _publish(self, result) -> None:
        stream = self.streams[result.camera]
        frame: Frame = result.frame
        instances = [make_instance(inst.id, inst.score, inst.state, inst.mask) for inst in result.instances]
        latency_ms = (time.monotonic() - frame.received) * 1000.0
        msg = make_instance_array(
            frame.header, result.camera, result.height, result.width, result.instruction.id,
            result.instruction.text, instances, keyframe=bool(result.keyframe), frame_index=int(result.frame_index),
            processing_ms=float(result.processing_ms), latency_ms=latency_ms, answer=result.answer)
        stream.instances_pub.publish(msg)
        stream.published += 1
        if stream.overlay_pub is not None and frame.image is not None:
            stream.overlay_pub.publish(overlay_message(frame.image, result, frame.header))

    def _report(self, camera: str, text: str) -> None:
        """Record an error for diagnostics and log it (rate-limited per camera, see LOG_BURST)."""
        stream = self.streams.get(camera)
        now = time.monotonic()
        if stream is None:
            self.last_error = text
            self.get_logger().error(text)
            return
        stream.last_error = text
        stream.errors += 1
        if now - stream.log_window >= LOG_INTERVAL_SECONDS:
            stream.log_window, stream.logged = now, 0
        if stream.logged >= LOG_BURST:
            stream.suppressed += 1
            return
        more = f" ({stream.suppressed} more error(s) on this camera were not logged)" if stream.suppressed else ""
        stream.logged, stream.suppressed = stream.logged + 1, 0
        self.get_logger().error(f"[{camera}] {text}{more}")

    # ---- instructions ---------------------------------------------------------------------------------------
    def _decode_instruction(self, raw: bytes, msgtype: str, source: str):
        """A serialised instruction message decoded with the package's own definitions (rosbags): every string
        exactly as sent, embedded NULs included, and bytes that are not UTF-8 an error. None after reporting."""
        try:
            return typestore().deserialize_cdr(raw, msgtype)
        except Exception as err:  # rosbags' SerdeError, caused by a UnicodeDecodeError for bytes that are not UTF-8
            why = "its bytes are not valid UTF-8" if isinstance(err.__cause__, UnicodeDecodeError) \
                else "it cannot be decoded"
            self._report("", f"instruction from {source} rejected: {why} ({err})")
            return None

    def _on_instruction(self, raw: bytes) -> None:
        msg = self._decode_instruction(raw, INSTRUCTION, "~/instruction")
        if msg is not None:
            self._set_instruction(msg, "~/instruction")

    def _on_instruction_text(self, raw: bytes) -> None:
        msg = self._decode_instruction(raw, STRING, "~/instruction_text")
        if msg is not None:
            self._set_instruction(Instruction(text=msg.data), "~/instruction_text")

    def _on_set_instruction(self, request, response):
        response.success, response.message, response.id = self._set_instruction(request.instruction,
                                                                                 "~/set_instruction")
        return response

    def _set_instruction(self, ins: Instruction, source: str) -> tuple[bool, str, str]:
        """Apply one instruction and log the outcome; returns (success, message, id in effect)."""
        where = f"camera {ins.camera!r}" if ins.camera else "every camera"
        try:
            active = self.book.apply_message(ins)
        except InstructionRejected as err:
            message = f"instruction from {source} rejected: {err}"
            self._report(ins.camera if ins.camera in self.streams else "", message)
            return False, message, ""
        if active is None:
            message = f"instruction cleared for {where} (from {source}): no output there until a new one"
        else:
            message = f"instruction {active.id!r} for {where} (from {source}): {quote_short(active.text)}"
        self.get_logger().info(message)
        return True, message, active.id if active else ""

    # ---- parameters -----------------------------------------------------------------------------------------
    def _check_parameters(self, params) -> SetParametersResult:
        for p in params:
            spec = BY_NAME.get(p.name)
            camera_param = p.name.partition(".")[0] in self.streams or p.name.endswith((".image_topic", ".compressed"))
            if spec is not None and spec.choices and p.value not in spec.choices:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name} must be one of {spec.choices}, got {p.value!r}")
            if spec is not None and spec.when == ACTIVATE and self.model is not None:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name} takes effect on activate: deactivate the node first")
            if ((spec is not None and spec.when == CONFIGURE) or camera_param) and self._configured:
                return SetParametersResult(successful=False,
                                           reason=f"{p.name} takes effect on configure: clean up the node first")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        changes = {p.name: p.value for p in params
                   if p.name in PIPELINE_SETTINGS and BY_NAME[p.name].when == RUNTIME}
        pipeline = self.pipeline
        if changes and pipeline is not None:
            try:
                pipeline.update_settings(**changes)
            except ValueError as err:  # the descriptors' ranges should have refused it already
                self.get_logger().error(f"settings not changed: {err}")
                return
            self.get_logger().info(f"settings changed: {changes}")

    # ---- diagnostics --------------------------------------------------------------------------------------------
    @staticmethod
    def _silent_topic(s: CameraStream, publishers: int, received0: int, now: float, period: float) -> str:
        """Why a subscribed camera with publishers delivered no frame in the last diagnostics period ("" if not)."""
        if (s.subscription is None or not publishers or s.received > received0
                or now - s.subscribed_at < 2 * period):
            return ""
        return (f"{publishers} publisher(s) on {s.topic} but no frame arrived in {period:.1f} s (subscribed "
                f"{s.reliability}): check the publisher's QoS and, for large best-effort images, its DDS transport "
                f"(README: 'Large images')")

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        self._follow_publishers()
        period = float(self._param("diagnostics_period"))
        state = self.state_label()
        node_status = DiagnosticStatus(
            name=f"{self.get_name()}: node", hardware_id=self.device or "none",
            level=DiagnosticStatus.ERROR if self.node_error else DiagnosticStatus.OK,
            message=self.node_error or state)
        node_status.values = _values(
            state=state, model=str(self._param("checkpoint")) if self.model is not None else "not loaded",
            model_version=(self.model.config.model_version or "unversioned") if self.model is not None else "",
            device=self.device or "none", last_error=self.node_error or self.last_error)
        statuses = [node_status]
        pipeline = self.pipeline
        for s in self.streams.values():
            t0, received0, published0, errors0 = s.mark
            dt = now - t0 if t0 else 0.0
            s.mark = (now, s.received, s.published, s.errors)
            # the pipeline's own counters: dropped frames, failed steps, latency (receipt -> result) percentiles
            stats = pipeline.stats(s.name) if pipeline is not None else {}
            active = self.book.get(s.name) if self.book is not None else None
            new_errors = s.errors > errors0
            publishers = self.count_publishers(s.topic)
            silent = self._silent_topic(s, publishers, received0, now, period)
            status = DiagnosticStatus(
                name=f"{self.get_name()}: {s.name}", hardware_id=self.device or "none",
                level=DiagnosticStatus.WARN if new_errors or silent else DiagnosticStatus.OK,
                message=s.last_error if new_errors else silent or ("no instruction" if active is None else "ok"))
            status.values = _values(
                input_rate_hz=f"{(s.received - received0) / dt:.2f}" if dt else "0.00",
                processed_rate_hz=f"{(s.published - published0) / dt:.2f}" if dt else "0.00",
                received=s.received, processed=s.published, dropped=stats.get("dropped", 0),
                unchanged=stats.get("unchanged", 0), bad_frames=s.bad_frames, errors=s.errors,
                latency_p50_ms=f"{stats.get('latency_p50_ms', 0.0):.1f}",
                latency_p95_ms=f"{stats.get('latency_p95_ms', 0.0):.1f}", device=self.device or "none",
                publishers=publishers, reliability=s.reliability or "none",
                instruction_id=active.id if active else "", instruction=active.text[:200] if active else "",
                last_error=s.last_error)
            statuses.append(status)
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _values(**items) -> list[KeyValue]:
    return [KeyValue(key=k, value=str(v)) for k, v in items.items()]


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = InstructSAMNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.state_label() == "inactive":
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # SIGINT's handler shuts the context down from another thread; a spin already past its ok() check then
        # fails to build its wait set on the dead context (rclpy's RCLError). Only that case is a clean stop.
        if executor.context.ok():
            raise
    finally:
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

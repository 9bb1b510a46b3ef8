"""python -m instructsam_tools.demo — the README's demo (bash scripts/demo.sh runs it after the set-up).

Starts instructsam_node, demo_camera and demo_planner as separate processes, exactly as a launch file would (the node
with `--ros-args --params-file config/instructsam.yaml -p ...`), records the node's results and overlay in this
process (demo_recorder), stops everything (SIGINT, then SIGKILL after a timeout; also on errors and Ctrl-C), writes
<out>/overlay.gif and <out>/summary.json (child logs in <out>/logs/) and prints the summary.

Exit status: 0 when every scripted instruction produced results; 1 with a message saying what went wrong
(checkpoint missing, the node failed to start, no results within --timeout seconds, a process crashed, ...);
130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from instructsam import resources

PARAMS_FILE = resources.find("config/instructsam.yaml", "the node parameter file")  # the shipped one
CAMERA = "camera"  # config/instructsam.yaml's camera: the node reads /camera/image_raw
STOP_TIMEOUT = 15.0  # seconds a process gets to exit after SIGINT before it is killed
DRAIN_SECONDS = 1.5  # after the camera's last frame: results stopped arriving for this long = done


class DemoError(RuntimeError):
    """The demo failed; the message says why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m instructsam_tools.demo",
        description="InstructSAM-ROS demo: the node on a synthetic camera with a scripted planner (separate ROS 2 "
                    "processes); writes an overlay GIF and prints a summary.")
    p.add_argument("--checkpoint", default=None,
                   help="InstructSAM checkpoint directory (default: the one in config/instructsam.yaml, "
                        "checkpoints/instructsam-tiny)")
    p.add_argument("--frames", type=int, default=150, help="frames the camera publishes (default 150)")
    p.add_argument("--fps", type=float, default=8.0, help="camera frame rate (default 8)")
    p.add_argument("--size", type=int, default=256, help="camera image width and height in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="synthetic video generator seed (default 0)")
    p.add_argument("--video", type=int, default=-1, help="video index (default: the first one that suits the demo)")
    p.add_argument("--out", default="outputs/demo", help="output directory (default outputs/demo)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds without any result (once the node is active) before giving up (default 30)")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds for the node to load the model and become active (default 180)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY:=VALUE",
                   help="extra node parameter, e.g. -p score_threshold:=0.3 or -p num_threads:=2 (repeatable; "
                        "the demo sets publish_overlay:=true and num_threads:=1)")
    args = p.parse_args(argv)
    if args.frames < 8:
        p.error(f"--frames must be at least 8 (four instructions need room), got {args.frames}")
    if not args.fps > 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    if args.size < 32:
        p.error(f"--size must be at least 32, got {args.size}")
    for item in args.param:
        if ":=" not in item:
            p.error(f"--param expects KEY:=VALUE, got {item!r}")
    return args


def find_checkpoint(given: str | None) -> Path:
    """--checkpoint, or the node YAML's checkpoint, resolved like the node does; checked before anything starts."""
    import yaml

    from instructsam.loading import check_checkpoint
    from instructsam.errors import CheckpointError
    from instructsam_ros.node import resolve_checkpoint

    path = given
    if path is None:
        path = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]["checkpoint"]
    try:
        found = resolve_checkpoint(path).resolve()
        check_checkpoint(found)
    except CheckpointError as err:
        hint = ("the shipped model (config/instructsam.yaml's checkpoint) is not there; " if given is None else "") + \
               "pass --checkpoint DIR (an untrained one for trying the plumbing: python -m instructsam_tools.tiny DIR)"
        raise DemoError(f"{err}\n{hint}") from None
    return found


def _param(key: str, value) -> list[str]:
    """`-p key:=value` with value in YAML that rcl parses to the intended type (JSON lists, floats with a dot)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple, str)):
        text = json.dumps(value)
    else:
        text = str(value)
    return ["-p", f"{key}:={text}"]


class Child:
    """One process in its own session (so Ctrl-C reaches only the demo, which stops the children in order), with
    its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict):
        self.name, self.cmd, self.log_path = name, cmd, log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup)
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        text = self.log().rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (no output)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT (a clean ROS shutdown), SIGKILL after `timeout`; then make sure nothing of its group is left."""
        if self.proc.poll() is None:
            self._signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"[demo] {self.name} did not stop within {timeout:g} s after SIGINT: killing it", flush=True)
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self._signal(signal.SIGKILL)  # anything the process may have started in its session
        self._log.close()
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _child_setup() -> None:
    """Runs in each child before exec (the demo starts its children before it has any thread, which makes this
    safe): SIGINT back to its default (a demo started in the background has it ignored, and the children would
    inherit that and ignore the clean stop), and on Linux SIGTERM when the demo dies without cleaning up."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def describe(objects: dict) -> str:
    return ", ".join(f"{o['color']} {o['shape']} ({o['motion']})" for o in objects.values())


def run(args: argparse.Namespace) -> int:
    from instructsam_tools.demo import scene

    started = time.monotonic()
    checkpoint = find_checkpoint(args.checkpoint)
    index = args.video if args.video >= 0 else scene.pick_video(args.seed, args.size)
    objects = scene.cast(args.seed, index, args.size)
    script = scene.default_script(objects, args.frames)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stale in ("overlay.gif", "summary.json"):
        (out / stale).unlink(missing_ok=True)

    # Talk on this host only unless told otherwise; children inherit the environment (and ROS_DOMAIN_ID).
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", RCUTILS_LOGGING_BUFFERED_STREAM="0",
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    print(f"[demo] model: {checkpoint}")
    print(f"[demo] camera: synthetic video {scene.SPLIT}-v{index:05d} (seed {args.seed}; {describe(objects)}), "
          f"{args.frames} frames {args.size}x{args.size} at {args.fps:g} fps -> /{CAMERA}/image_raw")
    for s in script:
        print(f"[demo] planner: from frame {s.at_frame:4d}: {s.id} {s.text!r} ({s.kind})")
    print(f"[demo] logs: {logs}/  (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')})", flush=True)

    # the node's YAML leaves score_threshold at -1: the checkpoint's own, calibrated on validation data
    # (instructsam_tools.evaluation.calibrate); a -p score_threshold:=... wins
    threshold = float(json.loads((checkpoint / "config.json").read_text()).get("score_threshold", 0.5))
    print(f"[demo] score threshold: {threshold:g} (the checkpoint's calibrated default)", flush=True)
    python = sys.executable
    node_cmd = [python, "-m", "instructsam_ros.node", "--ros-args", "--params-file", str(PARAMS_FILE),
                *_param("checkpoint", str(checkpoint)), *_param("publish_overlay", True),
                # one torch thread: the camera, planner and recorder share the CPU, and torch's default (all
                # cores) then stalls badly (the tiny model: 45 ms per frame on one thread, 0.1-6 s on two busy ones)
                *_param("num_threads", 1)]
    for item in args.param:
        node_cmd += ["-p", item]
    planner_cmd = [python, "-m", "instructsam_tools.demo.planner", "--ros-args",
                   *_param("texts", [s.text for s in script]), *_param("at_frames", [s.at_frame for s in script]),
                   *_param("ids", [s.id for s in script]), *_param("tasks", [s.task for s in script]),
                   *_param("frames", args.frames), *_param("image_topic", f"/{CAMERA}/image_raw"),
                   *_param("instances_topic", f"/{CAMERA}/instances")]
    camera_cmd = [python, "-m", "instructsam_tools.demo.camera", "--ros-args", *_param("camera", CAMERA),
                  *_param("frames", args.frames), *_param("fps", float(args.fps)), *_param("size", args.size),
                  *_param("seed", args.seed), *_param("video", index),
                  *_param("wait_for_nodes", ["instructsam_node", "demo_planner", "demo_recorder"])]

    # load ROS before the children start (importing it takes seconds on a busy machine, and Ctrl-C must stop the
    # demo cleanly at any point after that), then own SIGINT as well as SIGTERM/SIGHUP
    import rclpy  # noqa: F401
    from instructsam_tools.demo.recorder import Recorder  # noqa: F401
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    children: list[Child] = []
    context = recorder = None
    error = ""
    interrupted = False
    try:
        # children first: the demo process has no threads yet (preexec_fn is only safe then)
        for name, cmd in (("node", node_cmd), ("planner", planner_cmd), ("camera", camera_cmd)):
            children.append(Child(name, cmd, logs / f"{name}.log", env))
        print(f"[demo] started node (pid {children[0].pid}), planner (pid {children[1].pid}), camera (pid "
              f"{children[2].pid}); the node is loading the model ...", flush=True)
        context, recorder, executor = _start_recorder()
        _record(args, children, recorder, executor, script, started)
    except DemoError as err:
        error = str(err)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[demo] interrupted: stopping", flush=True)
    finally:
        # a second Ctrl-C must not cut the clean-up short (each child is killed after STOP_TIMEOUT anyway)
        previous.setdefault(signal.SIGINT, signal.getsignal(signal.SIGINT))
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        codes = {}
        for child in reversed(children):  # camera, planner, then the node
            codes[child.name] = child.stop()
        if recorder is not None:
            recorder.destroy_node()
        if context is not None:
            context.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not error and not interrupted:
        bad = {name: code for name, code in codes.items() if code != 0}
        if bad:
            error = "unclean exit: " + ", ".join(f"{name} exited with {code}" for name, code in bad.items())
    for child in children:
        if error and (child.name == "node" or codes.get(child.name)):
            error += f"\n  {child.name} log ({child.log_path}), last lines:\n{child.tail()}"

    summary = None
    if recorder is not None and (recorder.results or recorder.overlays):
        from instructsam_tools.demo.recorder import format_summary, write_outputs
        from instructsam_tools.demo.self_score import score_instructions
        steps = [s.as_dict() for s in script]
        video = scene.demo_video(args.seed, index, args.frames, args.size)  # the camera's frames and ground truth
        summary, gif = write_outputs(
            recorder, out, args.fps, steps,
            self_scores=score_instructions(recorder.results, recorder.frame_digests, video, steps),
            extra={"checkpoint": str(checkpoint), "video": f"{scene.SPLIT}-v{index:05d}", "seed": args.seed,
                   "frames": args.frames, "fps": args.fps, "size": args.size, "exit_codes": codes,
                   "pids": {c.name: c.pid for c in children}})
        print("\n[demo] summary, per instruction in the planner's order:")
        print(format_summary(summary))
        print(f"[demo] GIF: {gif} ({summary['gif']['frames']} frames)" if gif else "[demo] no overlay frames: no GIF")
        print(f"[demo] summary: {out / 'summary.json'}")
    if not error and not interrupted:
        silent = [s for s, ins in zip(script, summary["instructions"] if summary else []) if not ins["results"]]
        if summary is None or silent or "gif" not in summary:
            error = ("no results for " + ", ".join(f"{s.id} {s.text!r}" for s in silent) if silent
                     else "no overlay frames were recorded") + \
                    " (is the model much slower than the camera? try a lower --fps)"
    print(f"[demo] processes stopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}; "
          f"{time.monotonic() - started:.1f} s in all", flush=True)
    if interrupted:
        return 130
    if error:
        print(f"[demo] FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    print("[demo] done", flush=True)
    return 0


def _start_recorder():
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from instructsam_tools.demo.recorder import Recorder

    context = Context()
    # the demo handles Ctrl-C itself (KeyboardInterrupt), so that it can stop its children in order
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    recorder = Recorder(camera=CAMERA, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(recorder)
    return context, recorder, executor


def _record(args, children: list[Child], recorder, executor, script, started: float) -> None:
    """Spin the recorder until the camera has sent every frame and the node's results have drained; raise
    DemoError on a crash, a node that does not come up, or missing results."""
    node, planner, camera = children
    active_at = streaming_at = camera_done_at = None
    announced: set[str] = set()
    texts = {s.id: s.text for s in script}
    stream_seconds = args.frames / args.fps
    while True:
        executor.spin_once(timeout_sec=0.05)
        now = time.monotonic()
        for child in (node, planner):
            if child.poll() is not None:
                raise DemoError(f"{child.name} exited early with code {child.poll()}")
        code = camera.poll()
        if code not in (None, 0):
            raise DemoError(f"camera exited with code {code}")
        if active_at is None:
            log = node.log()
            failed = next((line for line in log.splitlines() if "configure failed" in line or "activate failed"
                           in line), None)
            if failed:
                raise DemoError(f"the node could not start: {failed.strip()}")
            if "active: model" in log:
                active_at = now
                print(f"[demo] {now - started:5.1f} s  node active (model loaded in {now - started:.1f} s)", flush=True)
            elif now - started > args.startup_timeout:
                raise DemoError(f"the node did not become active within {args.startup_timeout:g} s "
                                f"(--startup-timeout)")
            continue
        if streaming_at is None and "streaming" in camera.log():
            streaming_at = now
            print(f"[demo] {now - started:5.1f} s  camera streaming", flush=True)
        for r in recorder.results:
            if r.instruction_id not in announced:
                announced.add(r.instruction_id)
                print(f"[demo] {now - started:5.1f} s  first result for {r.instruction_id} "
                      f"{texts.get(r.instruction_id, r.instruction)!r}: {len(r.visible)} instance(s)", flush=True)
        last = recorder.results[-1].arrived if recorder.results else None
        if last is None and now - active_at > args.timeout:
            raise DemoError(f"no results received in {args.timeout:g} s after the node became active (--timeout); "
                            f"camera frames seen by the recorder: {recorder.camera_frames}")
        if last is not None and time.time() - last > args.timeout:
            raise DemoError(f"results stopped: none in the last {args.timeout:g} s (--timeout)")
        if now - active_at > 3 * stream_seconds + args.timeout + 30:
            raise DemoError(f"the camera did not finish its {args.frames} frames in time")
        if code == 0:
            camera_done_at = camera_done_at or now
            quiet = last is None or time.time() - last > DRAIN_SECONDS
            fresh = recorder.diagnostics_at > camera_done_at + DRAIN_SECONDS  # counters after the last frame
            if (quiet and fresh) or now - camera_done_at > args.timeout:
                print(f"[demo] {now - started:5.1f} s  camera finished; {len(recorder.results)} results recorded",
                      flush=True)
                return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except DemoError as err:  # before any process started (e.g. no checkpoint)
        print(f"[demo] FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before any process started
        print("\n[demo] interrupted", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

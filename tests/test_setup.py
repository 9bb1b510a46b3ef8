"""The one-step setup is idempotent and fast on a ready machine; the colcon build works both ways."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO


def test_second_setup_run_is_fast():
    start = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - start
    assert "venv up to date" in out.stdout and "messages up to date" in out.stdout, out.stdout
    assert elapsed < 30, f"a second setup run took {elapsed:.1f} s"


def colcon_build(tmp_path: Path, *cmake_args: str) -> float:
    """colcon build of the package into tmp_path/install, as on a robot; returns the seconds it took."""
    venv = REPO / ".venv"
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    start = time.monotonic()
    build = subprocess.run(
        ["colcon", "--log-base", str(tmp_path / "log"), "build", "--paths", str(REPO),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
         "-DPython3_NumPy_INCLUDE_DIR=/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include",
         *cmake_args],
        capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return time.monotonic() - start


def installed_env(prefix: Path) -> dict:
    """The environment of a robot that sourced the install: the install's site-packages and the ROS 2 runtime,
    and nothing of the source tree (PYTHONPATH replaced, not extended)."""
    ros_libs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                if d and not d.startswith(str(REPO / "install"))]  # the ROS 2 wheels' libraries, not our build's
    return dict(os.environ, PYTHONPATH=str(prefix / "lib" / "python3.11" / "site-packages"),
                AMENT_PREFIX_PATH=f"{prefix}:{REPO / '.venv'}",
                LD_LIBRARY_PATH=os.pathsep.join([str(prefix / "lib"), *ros_libs]),
                PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")


def test_robot_colcon_build_installs_the_runtime_and_the_node_which_starts_without_a_checkout(tmp_path):
    """A clean colcon build (messages, the runtime library, the ROS layer, the node's launch file, parameters and
    the tiny checkpoint) in under 60 s; the node starts from the install alone; the tools are an optional part."""
    elapsed = colcon_build(tmp_path)
    assert elapsed < 60, f"colcon build took {elapsed:.1f} s"
    prefix = tmp_path / "install" / "instructsam_ros"
    site = prefix / "lib" / "python3.11" / "site-packages"
    share = prefix / "share" / "instructsam_ros"
    assert (site / "instructsam_ros" / "conversions.py").is_file() and (site / "instructsam_ros" / "bags").is_dir()
    assert (site / "instructsam" / "pipeline" / "instructions.py").is_file()
    assert not (site / "instructsam_tools").exists()  # training, evaluation, benchmarks: not on a robot
    assert (share / "msg" / "InstanceMaskArray.msg").is_file()
    assert (share / "launch" / "instructsam.launch.py").is_file() and (share / "config" / "instructsam.yaml").is_file()
    assert not (share / "launch" / "demo.launch.py").exists() and not (share / "config" / "train_tiny.yaml").exists()
    checkpoint = share / "checkpoints" / "instructsam-tiny"
    assert (checkpoint / "model.safetensors").is_file()
    exe = prefix / "lib" / "instructsam_ros" / "instructsam_node"
    assert os.access(exe, os.X_OK) and not (prefix / "lib" / "instructsam_ros" / "demo_camera").exists()

    # The installed tree alone provides code, messages and share files; nothing is imported from the source tree.
    env = installed_env(prefix)
    probe = ("import json, sys, instructsam, instructsam.resources as r, instructsam_ros.node, "
             "instructsam_ros.bags.typestore as t, importlib.util as u; from instructsam_ros.srv import SetInstruction; "
             "print(json.dumps({'files': [instructsam.__file__, instructsam_ros.node.__file__, str(t.find_msg_dir())], "
             "'share': [str(d) for d in r.share_dirs()], 'tools': u.find_spec('instructsam_tools') is not None, "
             "'path': sys.path}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert all(f.startswith(str(prefix)) for f in found["files"]) and found["share"] == [str(share)], found
    assert not found["tools"]
    venv = REPO / ".venv"  # the interpreter's own environment (torch, rclpy): not the checkout's code
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(REPO)
                and not Path(p).resolve().is_relative_to(venv)], found["path"]

    # The installed node, started as `ros2 run` does, with the installed parameters and a checkpoint path.
    node = subprocess.Popen(
        [sys.executable, str(exe), "--ros-args", "--params-file", str(share / "config" / "instructsam.yaml"),
         "-p", f"checkpoint:={checkpoint}", "-p", "num_threads:=1"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and node.poll() is None:
            line = node.stdout.readline()
            lines.append(line)
            if "active: model" in line:
                break
        assert any("active: model" in line and str(checkpoint) in line for line in lines), "".join(lines)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()
    assert node.returncode == 0, "".join(lines) + node.stdout.read()

    # The tools as the optional part of the same build.
    colcon_build(tmp_path, "-DINSTALL_TOOLS=ON")
    assert (site / "instructsam_tools" / "training" / "trainer.py").is_file()
    assert (share / "launch" / "demo.launch.py").is_file() and (share / "config" / "train_tiny.yaml").is_file()
    for name in ("demo_camera", "demo_planner", "demo_recorder"):  # what demo.launch.py starts
        assert os.access(prefix / "lib" / "instructsam_ros" / name, os.X_OK), name
    out = subprocess.run([sys.executable, "-c", "import instructsam_tools.demo.camera as c; print(c.__file__)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and str(site) in out.stdout, out.stderr

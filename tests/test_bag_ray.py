"""bag_eval on a real two-node Ray cluster on this machine: a head node and a worker node, each started as its own
process on loopback (`ray start --head`, `ray start --address`). The merged report equals the local
`--workers 1` report of the same bags metric by metric (timings aside); with the worker node killed mid-run the
run still completes with every bag scored once; a re-run into the same --out reuses what finished, and a bag
that fails on the cluster is reported by name and left out with --skip-failed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bag_helpers import SETTINGS, synthetic, tiny_dir
from instructsam_tools.bag_eval.cli import main
from instructsam_tools.bag_eval.scoring import strip_timing

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install ray==2.60.0; CI installs it)")

REPO = Path(__file__).resolve().parents[1]
# Ray replaces 127.0.0.1 and localhost by the host's interface address: the cluster lives on 127.0.0.2, which is
# loopback too, so nothing leaves the loopback interface
HOST = "127.0.0.2"
NODE_ARGS = [f"--node-ip-address={HOST}", "--num-cpus=1", "--object-store-memory=80000000",
             "--disable-usage-stats", "--block"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Cluster:
    """A head and a worker node as two `ray start --block` processes (each the parent of its node's daemons)."""

    def __init__(self):
        self.port = _free_port()
        self.address = f"{HOST}:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        self.head = self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={self.temp}"])
        self._wait(1)
        self.worker = self._start([f"--address={self.address}"])
        self._wait(2)

    def _start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen([shutil.which("ray"), "start", *args, *NODE_ARGS], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def alive_nodes(self) -> int:
        done = subprocess.run([shutil.which("ray"), "status", "--address", self.address], capture_output=True,
                              text=True, timeout=60)
        active = done.stdout.split("Active:")[-1].split("Pending:")[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def _wait(self, nodes: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < nodes:
            assert time.monotonic() < deadline, f"the Ray cluster did not reach {nodes} node(s)"
            time.sleep(1.0)

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node: its `ray start` process and every process under it (raylet, its workers)."""
        import psutil

        root = psutil.Process(self.worker.pid)
        procs = [*root.children(recursive=True), root]
        assert any(p.name() == "raylet" for p in procs), [p.name() for p in procs]
        for p in procs:
            p.kill()
        psutil.wait_procs(procs, timeout=10)
        self.worker.wait()

    def stop(self) -> None:
        """Stop only this cluster's nodes (`ray stop` would stop every Ray process on the machine)."""
        for proc in (self.worker, self.head):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


def _bag_eval(capsys, bags, out, *extra) -> str:
    settings = [f"--set={k}={v}" for k, v in SETTINGS.items()]
    code = main(["run", *map(str, bags), "--checkpoint", str(tiny_dir()), "--out", str(out), "--no-progress",
                 *settings, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    if "--skip-failed" in extra:
        assert "bag_eval: skipped: bag broken" in captured.err and "in the ground truth" in captured.err, \
            captured.err
    return captured.out


def _taller(gt: dict) -> dict:
    """Ground truth that is consistent in itself but one row taller than the bag's frames: it passes preflight,
    and the replay on the cluster fails when it attaches it (a task that raises, not a dead worker)."""
    import numpy as np

    from instructsam_ros.message_codec import encode_rle

    for topic in gt["topics"].values():
        topic["height"] += 1
        empty = encode_rle(np.zeros((topic["height"], topic["width"]), bool))
        for frame in topic["frames"]:
            for inst in frame["instances"]:
                inst["segmentation"] = {"size": [topic["height"], topic["width"]], "counts": empty}
    return gt


def _report(out: Path) -> dict:
    return strip_timing(json.loads((out / "metrics.json").read_text()))


def test_ray_report_equals_the_local_one_and_survives_a_killed_node(cluster, tmp_path, capsys):
    synthetic(tmp_path / "bags", videos=4, frames=5, size=40)
    bags = sorted((tmp_path / "bags").glob("synthetic_?"))
    local = _bag_eval(capsys, bags, tmp_path / "local", "--workers", "1")
    on_ray = _bag_eval(capsys, bags, tmp_path / "ray", "--ray", cluster.address)
    assert local.splitlines()[-1] == on_ray.splitlines()[-1]
    expected = _report(tmp_path / "local")
    got = _report(tmp_path / "ray")
    for key in expected:  # metric by metric, so a difference names itself
        assert got[key] == expected[key], key

    # the worker node dies mid-run: its actor restarts on the head node and its bag is retried
    command = [sys.executable, "-m", "instructsam_tools.bag_eval", "run", *map(str, bags), "--checkpoint", str(tiny_dir()),
               "--out", str(tmp_path / "killed"), "--no-progress", "--ray", cluster.address,
               *[f"--set={k}={v}" for k, v in SETTINGS.items()]]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = tmp_path / "killed" / "records"
    deadline = time.monotonic() + 240
    while not (records.is_dir() and any(records.glob("*.records.json"))):  # the run is under way
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no bag finished on the cluster in time"
        time.sleep(0.1)
    cluster.kill_worker_node()
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert "its worker died" in err and "retrying (1 of 2)" in err, err[-3000:]  # a bag was in flight there
    summary = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert sorted(summary["per_bag"]) == sorted(b.name for b in bags) and summary["num_bags"] == 4
    assert _report(tmp_path / "killed") == expected, "every bag scored once, as in the local run"

    # a re-run into the same --out reuses every finished bag; a fifth bag whose ground truth does not fit its
    # frames fails on the cluster (after preflight) and, with --skip-failed, is reported by name and left out
    [made] = synthetic(tmp_path / "bad", videos=1, frames=5, size=40, seed=7)
    bad = made.bag.with_name("broken")  # a name of its own (a clash would rename every synthetic_0)
    made.bag.rename(bad)
    made.schedule.rename(bad.with_name("broken.instructions.yaml"))
    bad.with_name("broken.gt.json").write_text(json.dumps(_taller(json.loads(made.ground_truth.read_text()))))
    again = _bag_eval(capsys, [*bags, bad], tmp_path / "killed", "--ray", cluster.address, "--skip-failed")
    assert "4 of 5 bag(s) reused" in again and again.splitlines()[-1].endswith(", 4 reused, 1 bag(s) failed)")
    assert sorted(json.loads((tmp_path / "killed" / "metrics.json").read_text())["per_bag"]) == \
        sorted(b.name for b in bags)

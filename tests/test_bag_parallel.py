"""Many bags: 4 synthetic bags evaluated by parallel worker processes give the same report as one after another
(everything but measured times), and per-bag records written as shards (as separate machines would) merge into
that same report."""
from __future__ import annotations

import json

from bag_helpers import SETTINGS, comparable, synthetic, tiny_dir
from instructsam_tools.bag_eval.cli import main
from instructsam_ros.bags.records import BagRecords
from instructsam_tools.bag_eval.scoring import strip_timing


def run(capsys, out, *extra):
    bags = sorted(p for p in out.parent.glob("bags/synthetic_?"))
    settings = [f"--set={k}={v}" for k, v in SETTINGS.items()]
    code = main(["run", *map(str, bags), "--checkpoint", str(tiny_dir()), "--out", str(out), "--no-progress",
                 *settings, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def report(out):
    return (strip_timing(json.loads((out / "metrics.json").read_text())),
            strip_timing(json.loads((out / "timeline.json").read_text())))


def test_parallel_equals_sequential_and_shards_merge(tmp_path, capsys):
    made = synthetic(tmp_path / "bags", videos=4, frames=5, size=40)
    assert len(made) == 4
    sequential = run(capsys, tmp_path / "sequential")
    parallel = run(capsys, tmp_path / "parallel", "--workers", "2")
    assert "completed, 0 skipped (4 bag(s), 20 frames processed, 0 dropped, 20 scored)" in sequential
    assert sequential.splitlines()[-1] == parallel.splitlines()[-1]

    summary, timeline = report(tmp_path / "sequential")
    assert report(tmp_path / "parallel") == (summary, timeline)
    assert summary["scored_frames"] == 20 and len(summary["per_bag"]) == 4
    for m in made:
        name = f"{m.bag.name}.records.json"
        one = BagRecords.load(tmp_path / "sequential" / "records" / name)
        other = BagRecords.load(tmp_path / "parallel" / "records" / name)
        assert comparable(one.frames, drop=()) == comparable(other.frames, drop=())
    assert any(f.visible() for m in made
               for f in BagRecords.load(tmp_path / "parallel" / "records" / f"{m.bag.name}.records.json").frames)

    # shards: each "machine" wrote some bags' records; merge takes files and directories, in any order
    shards = sorted((tmp_path / "parallel" / "records").glob("*.records.json"))
    (tmp_path / "shard_b").mkdir()
    for path in shards[2:]:
        path.rename(tmp_path / "shard_b" / path.name)
    code = main(["merge", str(tmp_path / "shard_b"), *map(str, reversed(shards[:2])), "--out",
                 str(tmp_path / "merged")])
    assert code == 0 and "completed, 0 skipped (4 bag(s)" in capsys.readouterr().out
    assert report(tmp_path / "merged") == (summary, timeline)

"""Helpers for the bag evaluation tests (tests/test_bag_*.py): one tiny model per test session, small synthetic
bags, and record comparisons that leave out what is measured (times) or positional (seq)."""
from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

from model_fixtures import load_tiny, tiny_dir

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "instructsam-tiny"
# The random tiny model scores ~0.25: a lower threshold than the node's default keeps real masks in the results.
SETTINGS = dict(keyframe_interval=3, score_threshold=0.2)


@functools.lru_cache(maxsize=1)
def model():
    """The tiny random-weight model (mechanics tests); the pipeline never changes it, so tests share it."""
    return load_tiny()


def checkpoint() -> Path:
    """The shipped checkpoint if it exists, else the tiny random one."""
    return SHIPPED if SHIPPED.is_dir() else tiny_dir()


def settings(**overrides):
    from instructsam.pipeline.frame_pipeline import PipelineSettings
    return PipelineSettings(**dict(SETTINGS, **overrides))


def synthetic(out_dir, **kw):
    """One small synthetic bag (default: 1 camera, 6 frames of 48 x 48); returns its SyntheticBag."""
    from instructsam_tools.bag_eval.synthetic_bags import make_synthetic_bags
    kw = dict(dict(videos=1, frames=6, size=48, cameras=1, max_objects=3), **kw)
    return make_synthetic_bags(out_dir, **kw)


def replay(made, **options):
    """Replay a SyntheticBag with its own schedule and ground truth."""
    from instructsam_tools.bag_eval.groundtruth import attach, load_ground_truth
    from instructsam_ros.bags.replay import ReplayOptions, replay_bag
    from instructsam_ros.bags.schedule import InstructionSchedule
    options.setdefault("schedule", InstructionSchedule.load(made.schedule))
    options.setdefault("progress", False)
    return attach(replay_bag(made.bag, model(), settings(), ReplayOptions(**options)),
                  load_ground_truth(made.ground_truth))


def comparable(frames, drop=("seq",)) -> list[dict]:
    """Frame records without measured times (and without `drop`)."""
    from instructsam_tools.bag_eval.scoring import strip_timing
    return [{k: v for k, v in strip_timing(asdict(f)).items() if k not in drop} for f in frames]

"""Shared test fixtures. ROS tests use real rclpy and the colcon-generated messages."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with shared/ beside it; INSTRUCTSAM_REALDATA points elsewhere if needed.
REALDATA = Path(os.environ.get("INSTRUCTSAM_REALDATA", REPO.parent / "shared" / "realdata"))

# Every pytest session talks on its own DDS domain, on this host only, so parallel runs
# (a developer's and CI's) never hear each other. Child processes inherit it.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def ros_context():
    """A fresh rclpy context, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.fail(f"the shared real test data is missing: {REALDATA}")
    return REALDATA

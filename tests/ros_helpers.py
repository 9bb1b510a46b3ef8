"""Small helpers for tests that talk over real ROS 2 topics."""
from __future__ import annotations

import time
from typing import Callable


def spin_until(executor, predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.05) -> bool:
    """Spin `executor` until `predicate()` holds or `timeout` seconds pass; returns predicate()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=period)
    return predicate()

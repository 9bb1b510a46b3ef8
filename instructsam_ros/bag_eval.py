"""Bag evaluation CLI of the ROS package: replay rosbag2 recordings through the node's frame pipeline, write the
results as InstanceMaskArray bags, score them against ground truth.

    python -m instructsam_ros.bag_eval run BAG [BAG ...] --checkpoint DIR --out DIR [--workers N] ...
    python -m instructsam_ros.bag_eval merge OUT/records ... --out DIR
    python -m instructsam_ros.bag_eval make-synthetic --out DIR [--storage sqlite3|mcap] [--compressed]

The work happens in the model library (instructsam.bags: rosbags for IO, no rclpy), so the same command runs on
machines without ROS as `python -m instructsam.bags`. docs/bag_evaluation.md has the formats and options.
"""
from __future__ import annotations

import sys

from instructsam.bags.cli import main

if __name__ == "__main__":
    sys.exit(main())

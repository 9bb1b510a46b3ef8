"""A camera in its own process for the transport tests: COUNT random rgb8 frames of WIDTH x HEIGHT on TOPIC at
RATE Hz with reliable or best-effort QoS, once a subscriber matching that reliability is there (up to 20 s).

    python tests/image_publisher.py TOPIC WIDTH HEIGHT reliable|best_effort COUNT RATE
"""
from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image


def main() -> int:
    topic, width, height, reliability, count, rate = sys.argv[1:7]
    width, height, count, rate = int(width), int(height), int(count), float(rate)
    rclpy.init()
    node = rclpy.create_node("test_image_publisher")
    reliable = reliability == "reliable"
    pub = node.create_publisher(Image, topic, QoSProfile(depth=10) if reliable else qos_profile_sensor_data)
    wanted = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:  # the node adapts its subscription to this publisher within a second
        infos = node.get_subscriptions_info_by_topic(topic)
        if any(i.qos_profile.reliability == wanted for i in infos) and pub.get_subscription_count() > 0:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # matched endpoints: let the data connection settle
    data = np.random.default_rng(0).integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()
    for i in range(count):
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=data)
        msg.header.frame_id = f"frame{i}"
        pub.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(1.0)  # the last frames are on their way before the publisher goes
    print(f"published {count}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

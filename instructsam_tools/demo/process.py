"""The demo's processes (camera, planner) share one life cycle: init rclpy, build the node, spin, clean up."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def spin_forever(executor: SingleThreadedExecutor, node: Node) -> int:
    executor.spin()
    return 0


def run_node(name: str, make_node: Callable[[], Node], args: list[str] | None = None,
             spin: Callable[[SingleThreadedExecutor, Node], int] = spin_forever) -> int:
    """Exit code: what `spin` returns, 0 on Ctrl-C / external shutdown, 2 for bad parameters (a ValueError while
    building the node, printed with the node's name)."""
    rclpy.init(args=args if args is not None else sys.argv)
    code, node = 0, None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        code = spin(executor, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as err:
        print(f"[{name}] error: {err}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code

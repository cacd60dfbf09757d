"""``ros2 run autodice_ros stages``: several partitions of a bundle in one process.

For users who prefer fewer processes to fault isolation (the plan's ``in_process`` option). Each
partition runs in the same lifecycle :class:`~autodice_ros.nodes.stage.StageNode` that ``stage``
runs, under its usual node name; they share one process, each spun by its own single-threaded
executor in its own thread (ONNX Runtime releases the GIL, so stages still overlap; rclpy's
multi-threaded executor would poll a busy stage's pending messages and burn a core). Between them
the transport hands the output arrays over directly -- no copy, no DDS -- while each stage still
publishes on its topic for consumers elsewhere. One crash stops them all.

Parameters of the ``stages`` node: ``bundle`` and ``partitions`` (comma-separated); ``camera_head``
and ``tail`` (the plan's ``one_process``): run the board's camera head and tail here too, under
their usual names, so the board is one ROS process. Every other parameter on the command line
(``threads``, ``qos.*``, ``fast_path``, ``image_qos.*``, ...) reaches each node that declares it.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter

from autodice_ros.errors import AutodiceError, BundleError
from autodice_ros.manifest import load_bundle
from autodice_ros.nodes.camera_head import CameraHead
from autodice_ros.nodes.common import declare
from autodice_ros.nodes.stage import StageNode
from autodice_ros.nodes.tail import Tail
from autodice_ros.plan import stage_node_name


class StagesNode(Node):
    """Holds the stage nodes of this process (and names the process in the ROS graph)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('stages', **kwargs)
        bundle = declare(self, 'bundle', '', 'deployment bundle directory (autodice split -o)')
        names = declare(self, 'partitions', '', 'comma-separated partitions to run in this process')
        manifest = load_bundle(bundle).manifest
        parts = [manifest.partition(name.strip()) for name in names.split(',') if name.strip()]
        if not parts:
            raise BundleError(f'{self.get_fully_qualified_name()}: parameter partitions is empty')
        with_head = declare(self, 'camera_head', False, "also run the board's camera head in this process")
        with_tail = declare(self, 'tail', False, "also run the board's tail in this process")
        self.stages = [
            StageNode(cli_args=['--ros-args', '-r', f'__node:={stage_node_name(part.name)}'],
                      parameter_overrides=[Parameter('partition', value=part.name)])
            for part in parts]
        self.others: list[Node] = []      # camera head, tail: ordinary nodes, active once made
        if with_head:
            self.others.append(CameraHead(cli_args=['--ros-args', '-r', '__node:=camera_head']))
        if with_tail:
            self.others.append(Tail(cli_args=['--ros-args', '-r', '__node:=tail']))

    def start(self) -> bool:
        """Configure and activate every stage, upstream first (as ``stage`` does with autostart)."""
        for stage in self.stages:
            if not stage.get_parameter('autostart').value:
                continue
            if stage.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().fatal(f'{stage.get_name()}: configure failed; exiting')
                return False
            stage.trigger_activate()
        return True


def _spin(executor: Any) -> None:
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def main(args: Sequence[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from autodice_ros.executor import make_executor

    rclpy.init(args=list(args) if args is not None else sys.argv)
    nodes: list[Any] = []
    executors: list[Any] = []
    threads: list[threading.Thread] = []
    try:
        container = StagesNode()
        nodes = [container, *container.stages, *container.others]
        if not container.start():
            return 1
        for node in nodes:
            executors.append(make_executor())
            executors[-1].add_node(node)
        for executor in executors[1:]:
            threads.append(threading.Thread(target=_spin, args=(executor,), daemon=True))
            threads[-1].start()
        executors[0].spin()        # the container here: SIGINT reaches this (the main) thread
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except AutodiceError as exc:   # bad bundle, bad parameter: one line, non-zero exit
        print(f'[FATAL] {exc}', file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the cleanup
        for executor in executors:
            executor.shutdown(timeout_sec=1.0)
        for thread in threads:
            thread.join(timeout=2.0)
        for node in reversed(nodes):
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

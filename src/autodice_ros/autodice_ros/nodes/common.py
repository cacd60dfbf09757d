"""What every autodice node shares: declared parameters, QoS from parameters, counters and
per-second ``diagnostic_msgs`` status, and a ``main`` that shuts down cleanly on Ctrl-C."""
from __future__ import annotations

import os
import signal
import statistics
import sys
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType

from autodice_ros.codec import qos_profile
from autodice_ros.errors import AutodiceError

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def declare(node: Any, name: str, default: Any, description: str, read_only: bool = True) -> Any:
    """Declare one parameter with a descriptor and return its value."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     type=_TYPES[type(default)])
    return node.declare_parameter(name, default, descriptor).value


def declare_qos(node: Any, prefix: str = 'qos', reliability: str = 'reliable', depth: int = 10) -> Any:
    """QoS as parameters (``<prefix>.reliability``, ``.depth``, ``.lifespan``), the ROS 2 way."""
    rel = declare(node, f'{prefix}.reliability', reliability,
                  "'reliable' (lost packets are resent; a reader lagging by more than depth "
                  "frames still loses the oldest, the publisher never blocks) or 'best_effort' "
                  "(nothing resent; the camera drivers' sensor-data QoS)")
    dep = declare(node, f'{prefix}.depth', depth, 'history depth (KEEP_LAST)')
    life = declare(node, f'{prefix}.lifespan', 0.0,
                   'seconds a published frame stays deliverable (DDS Lifespan; 0: forever): after a '
                   'link outage or a backlog, older frames are dropped, never delivered late')
    return qos_profile(rel, dep, lifespan=life)


def declare_remote_boards(node: Any) -> bool:
    """The ``remote_boards`` parameter: the manifest's other boards are other machines (the plan
    sets it when it starts one board of several)."""
    return bool(declare(node, 'remote_boards', False,
                        "the manifest's other boards are other machines (set by the plan when it "
                        'starts one board of several): inputs from them start on TensorList messages'))


def remote_inputs(remote_boards: bool, manifest: Any, board: str, topics: Sequence[str]) -> set[str]:
    """Which of ``topics`` a node on ``board`` gets from another machine. Those subscriptions take
    TensorList messages from the first frame on (``payload_first``): a descriptor from another
    host names a slot this machine cannot read, and with every link of a within-layer split
    switching on its first frame, a pipeline lost one frame per split layer before anything
    came out."""
    if not remote_boards:
        return set()
    from autodice_ros.plan import link_boards

    publisher_board = {p.topic: p.board for p in manifest.partitions}
    publisher_board.update({t.topic: link_boards(manifest)[0] for t in manifest.inputs})
    return {t for t in topics if publisher_board.get(t, board) != board}


class Stats:
    """Counters a node reports in its diagnostics: frames in/out, drops by reason, timings."""

    def __init__(self, window: int = 100) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.drops: Counter[str] = Counter()
        self.timings: dict[str, deque[float]] = {}
        self._window = window

    def time(self, name: str, ms: float) -> None:
        self.timings.setdefault(name, deque(maxlen=self._window)).append(ms)

    def values(self) -> dict[str, str]:
        out = {'frames_in': str(self.frames_in), 'frames_out': str(self.frames_out),
               'drops': str(sum(self.drops.values()))}
        out.update({f'drops.{reason}': str(n) for reason, n in sorted(self.drops.items())})
        for name, samples in self.timings.items():
            if samples:
                out[f'{name}_ms.last'] = f'{samples[-1]:.3f}'
                out[f'{name}_ms.p50'] = f'{statistics.median(samples):.3f}'
        return out


class GapCounter:
    """Counts frames that never arrived, from gaps in the frame numbers the head gave them.

    DDS drops silently (a full KEEP_LAST queue, a lost link); the numbering shows it. A number
    lower than the last one means the head restarted: start counting afresh.
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def missed(self, frame: int) -> int:
        gap = frame - self._last - 1 if self._last is not None and frame > self._last else 0
        self._last = frame
        return gap


class Diagnostics:
    """Publishes the node's :class:`Stats` (plus extra values) on /diagnostics every period."""

    def __init__(self, node: Any, stats: Stats, period: float, hardware_id: str = '',
                 extra: Callable[[], dict[str, str]] | None = None) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self._node = node
        self._stats = stats
        self._extra = extra
        self._hardware_id = hardware_id
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(period, self.publish)

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        values = self._stats.values()
        if self._extra is not None:
            values.update(self._extra())
        status = DiagnosticStatus()
        status.name = self._node.get_fully_qualified_name()
        status.hardware_id = self._hardware_id
        drops = sum(self._stats.drops.values())
        status.level = DiagnosticStatus.WARN if drops else DiagnosticStatus.OK
        status.message = f'{drops} dropped' if drops else 'ok'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [status]
        self._publisher.publish(msg)

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        self._node.destroy_publisher(self._publisher)


_warm_placeholder: Any = None   # set in a spare process: rclpy and its DDS participant already up


def warm_up() -> None:
    """Start rclpy and a DDS participant before knowing which node this process will be.

    A spare process (:mod:`autodice_ros.nodes.spare`) calls this: its participant is discovered
    by the running pipeline long before it is needed, so a node it later becomes only announces
    its new publishers and subscriptions. A participant exists only with a node, hence a hidden
    placeholder, removed once the real node exists.
    """
    import rclpy

    global _warm_placeholder
    rclpy.init(args=['--ros-args'])
    _warm_placeholder = rclpy.create_node(f'_autodice_spare_{os.getpid()}', enable_rosout=False,
                                          start_parameter_services=False)


def spin_node(factory: Callable[..., Any], args: Sequence[str] | None = None,
              lifecycle_autostart: bool = False) -> int:
    """``main`` of every node: init, build, (auto-)start, spin, and shut down cleanly."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from autodice_ros.executor import make_executor

    argv = list(args) if args is not None else sys.argv
    node_kwargs: dict[str, Any] = {}
    if _warm_placeholder is None:
        rclpy.init(args=argv)
    else:          # a warmed-up spare: the ROS arguments apply to this node only
        node_kwargs['cli_args'] = argv[1:]
    node = None
    try:
        node = factory(**node_kwargs)
        if _warm_placeholder is not None:
            _warm_placeholder.destroy_node()
        if lifecycle_autostart and node.get_parameter('autostart').value:
            from rclpy.lifecycle import TransitionCallbackReturn
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('configure failed; exiting')
                return 1
            node.trigger_activate()
        rclpy.spin(node, executor=make_executor())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except AutodiceError as exc:   # bad bundle, bad parameter: one line, non-zero exit
        print(f'[FATAL] {exc}', file=sys.stderr)
        return 1
    finally:
        # launchers often deliver Ctrl-C twice (to the group and forwarded): finish cleaning up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0

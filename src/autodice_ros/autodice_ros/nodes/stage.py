"""``ros2 run autodice_ros stage``: one sub-model of a bundle as a lifecycle node.

configure: read the manifest, check the sub-model's sha256, open an ONNX Runtime session.
activate: subscribe to one ``TensorList`` topic per producing partition, publish on its own.
Each frame's inputs are joined by image stamp + frame number, run, and published with the same
header. Bad messages are logged (naming topic and field), dropped and counted; the node stays up.
The diagnostics report a frame's age (wall clock minus image stamp) when its inputs are complete
(``age_in``) and once its outputs are published (``age_out``): a hop's latency is the next node's
``age_in`` minus this one's ``age_out``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode

from autodice_ros.codec import Frame, TensorPublisher, TensorSubscriber
from autodice_ros.errors import AutodiceError, TensorError
from autodice_ros.inference import create_session, pin_cores, run_session
from autodice_ros.join import FrameJoiner
from autodice_ros.manifest import Bundle, Partition, check_partition_file, load_bundle
from autodice_ros.nodes.common import (
    Diagnostics,
    GapCounter,
    Stats,
    declare,
    declare_qos,
    declare_remote_boards,
    remote_inputs,
    spin_node,
)
from autodice_ros.rosutil import stamp_ns


class StageNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        self._bundle: Bundle | None = None
        self._part: Partition | None = None
        self._session: Any = None
        self._publisher: TensorPublisher | None = None
        self._subscribers: list[TensorSubscriber] = []
        self._joiner: FrameJoiner | None = None
        self._diagnostics: Diagnostics | None = None
        self.stats = Stats()
        self._gaps = GapCounter()
        super().__init__('stage', **kwargs)
        self._bundle_dir = declare(self, 'bundle', '', 'deployment bundle directory (autodice split -o)')
        self._partition = declare(self, 'partition', '', 'name of the partition this node runs')
        self._threads = declare(self, 'threads', 0, 'ONNX Runtime intra-op threads (0: from the manifest)')
        self._provider = declare(self, 'provider', '', 'execution provider (empty: from the manifest)')
        self._join_capacity = declare(self, 'join_capacity', 8, 'frames waiting for a missing input')
        self._period = declare(self, 'diagnostics_period', 1.0, 'seconds between /diagnostics reports')
        declare(self, 'autostart', True, 'configure and activate at start-up (no lifecycle manager)')
        self._qos = declare_qos(self)
        self._remote_boards = declare_remote_boards(self)

    # -- lifecycle --------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._bundle = load_bundle(self._bundle_dir)
            self._part = self._bundle.manifest.partition(self._partition)
            path = check_partition_file(self._bundle, self._part)
            warning = pin_cores(self._part.cores)
            if warning:
                self.get_logger().warning(warning)
            threads = self._threads or self._part.threads
            self._session, choice = create_session(path, threads, self._provider or self._part.provider)
        except AutodiceError as exc:
            self.get_logger().error(f'cannot configure: {exc}')
            return TransitionCallbackReturn.FAILURE
        if choice.fallback_reason:
            self.get_logger().warning(f'{choice.fallback_reason}; running on {choice.provider}')
        self.get_logger().info(f'partition {self._part.name} ({path.name}) on board {self._part.board}: '
                               f'{choice.provider}, {choice.threads} thread(s)')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._part is not None
        part = self._part
        self._publisher = TensorPublisher(self, part.topic, self._qos)
        topics = part.input_topics()
        self._joiner = FrameJoiner(topics, self._join_capacity, drops=self.stats.drops)
        assert self._bundle is not None
        remote = remote_inputs(self._remote_boards, self._bundle.manifest, part.board, topics)
        self._subscribers = [
            TensorSubscriber(self, topic, self._qos, [t for t in part.inputs if t.topic == topic],
                             self._on_frame, self._on_bad_message, payload_first=topic in remote)
            for topic in topics]
        self._diagnostics = Diagnostics(self, self.stats, self._period, part.board, self._extra_values)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_topics()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_topics()
        self._session = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_topics()
        self._session = None
        return TransitionCallbackReturn.SUCCESS

    def _close_topics(self) -> None:
        for sub in self._subscribers:
            sub.destroy(self)
        self._subscribers = []
        if self._publisher is not None:
            self._publisher.destroy(self)
            self._publisher = None
        if self._diagnostics is not None:
            self._diagnostics.destroy()
            self._diagnostics = None

    # -- data path --------------------------------------------------------------------------

    def _on_frame(self, topic: str, frame: Frame) -> None:
        assert self._joiner is not None and self._publisher is not None
        self.stats.frames_in += 1
        joined = self._joiner.add(topic, frame)
        if joined is None:
            return
        self.stats.drops['upstream'] += self._gaps.missed(joined.frame)
        self.stats.time('age_in', (time.time_ns() - stamp_ns(joined.header)) / 1e6)
        start = time.perf_counter()
        try:
            outputs = self._infer(joined.tensors)
        except Exception as exc:  # ORT's errors are untyped; a bad frame must not kill the stage
            self.stats.drops['inference_error'] += 1
            self.get_logger().warning(f'frame {joined.frame}: inference failed, dropped: {exc}')
            return
        self.stats.time('inference', (time.perf_counter() - start) * 1e3)
        if self._publisher.publish(joined.header, joined.frame, outputs):
            self.stats.frames_out += 1
            self.stats.time('age_out', (time.time_ns() - stamp_ns(joined.header)) / 1e6)
        else:
            self.stats.drops['publish_failed'] += 1

    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the sub-model; its outputs go straight into a shared-memory slot when a stage on
        this host reads them (publish then copies nothing)."""
        assert self._publisher is not None
        slot = self._publisher.borrow()
        if slot is not None:
            try:
                return run_session(self._session, inputs, into=slot)
            except Exception:    # not the last frame's shapes after all: the plain way decides
                self._publisher.give_back()
        return run_session(self._session, inputs)

    def _on_bad_message(self, topic: str, exc: TensorError) -> None:
        self.stats.drops[exc.reason] += 1
        self.get_logger().warning(f'dropped a message: {exc}')

    def _extra_values(self) -> dict[str, str]:
        depth = self._joiner.depth if self._joiner is not None else 0
        in_place = self._publisher.in_place if self._publisher is not None else 0
        return {'queue_depth': str(depth), 'partition': self._part.name if self._part else '',
                'frames_written_in_place': str(in_place)}


def main(args: Sequence[str] | None = None) -> int:
    return spin_node(StageNode, args, lifecycle_autostart=True)


if __name__ == '__main__':
    raise SystemExit(main())

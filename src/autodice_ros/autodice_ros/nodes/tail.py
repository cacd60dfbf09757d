"""``ros2 run autodice_ros tail``: the pipeline's result.

Joins the model's outputs by frame, republishes them as one ``TensorList`` on ``output`` (same
header as the camera image), and for classifiers publishes ``autodice_msgs/Classification`` on
``result`` (top-k ids, scores, labels where the bundle has them). Image-to-result latency is
measured against the image stamp and reported in the diagnostics.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from builtin_interfaces.msg import Duration
from rclpy.node import Node

from autodice_msgs.msg import Classification
from autodice_ros.codec import Frame, TensorPublisher, TensorSubscriber
from autodice_ros.errors import TensorError
from autodice_ros.join import FrameJoiner
from autodice_ros.manifest import OUTPUT_TOPIC, RESULT_TOPIC, load_bundle
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
from autodice_ros.plan import link_boards
from autodice_ros.postprocess import top_k
from autodice_ros.rosutil import stamp_ns


class Tail(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('tail', **kwargs)
        self.stats = Stats()
        self._gaps = GapCounter()
        bundle = load_bundle(declare(self, 'bundle', '', 'deployment bundle directory'))
        period = declare(self, 'diagnostics_period', 1.0, 'seconds between /diagnostics reports')
        capacity = declare(self, 'join_capacity', 8, 'frames waiting for a missing output')
        qos = declare_qos(self)
        manifest = bundle.manifest
        self._post = manifest.postprocess
        self._labels = bundle.labels()
        self._outputs = [t.name for t in manifest.outputs]
        topics = manifest.output_topics()
        self._joiner = FrameJoiner(topics, capacity, drops=self.stats.drops)
        remote = remote_inputs(declare_remote_boards(self), manifest, link_boards(manifest)[1], topics)
        self._subscribers = [
            TensorSubscriber(self, topic, qos, [t for t in manifest.outputs if t.topic == topic],
                             self._on_frame, self._on_bad_message, payload_first=topic in remote)
            for topic in topics]
        self._output = TensorPublisher(self, OUTPUT_TOPIC, qos)
        self._result = (self.create_publisher(Classification, RESULT_TOPIC, qos)
                        if self._post.kind == 'classification' else None)
        self._diagnostics = Diagnostics(self, self.stats, period)

    def _on_frame(self, topic: str, frame: Frame) -> None:
        self.stats.frames_in += 1
        joined = self._joiner.add(topic, frame)
        if joined is None:
            return
        self.stats.drops['upstream'] += self._gaps.missed(joined.frame)
        outputs = {name: joined.tensors[name] for name in self._outputs}
        self._output.publish(joined.header, joined.frame, outputs)
        latency_ns = max(0, time.time_ns() - stamp_ns(joined.header))
        self.stats.time('latency', latency_ns / 1e6)
        if self._result is not None:
            best = top_k(outputs[self._post.output], self._post, self._labels)
            msg = Classification(header=joined.header, frame=joined.frame, class_ids=best.class_ids,
                                 scores=best.scores, labels=best.labels,
                                 latency=Duration(sec=latency_ns // 1_000_000_000,
                                                  nanosec=latency_ns % 1_000_000_000))
            self._result.publish(msg)
        self.stats.frames_out += 1

    def _on_bad_message(self, topic: str, exc: TensorError) -> None:
        self.stats.drops[exc.reason] += 1
        self.get_logger().warning(f'dropped a message: {exc}')


def main(args: Sequence[str] | None = None) -> int:
    return spin_node(Tail, args)


if __name__ == '__main__':
    raise SystemExit(main())

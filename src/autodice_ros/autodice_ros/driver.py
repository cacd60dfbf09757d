"""Drive a running pipeline from outside: feed images, collect the tail's outputs by frame.

``replay``, ``demo``, the benchmarks and the end-to-end tests all do the same thing: start the
plan's nodes (``Runner``), wait until every link is connected (graph, not sleeps), publish
``sensor_msgs/Image`` messages on the head's topic, and gather the tail's ``TensorList`` outputs
keyed by image stamp + frame number. :class:`PipelineDriver` is that, once.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodice_ros.codec import Frame, TensorSubscriber, qos_profile
from autodice_ros.errors import AutodiceError
from autodice_ros.manifest import IMAGE_TOPIC, INPUT_TOPIC, OUTPUT_TOPIC, Manifest
from autodice_ros.rosutil import now_header, spin_until, unconnected_links

StampKey = tuple[int, int]   # (sec, nanosec) of the image: what an outsider can match on
PROBE_FRAME_ID = '__autodice_probe__'


@dataclass
class Received:
    """One output frame as the driver saw it."""

    frame: int
    stamp: StampKey
    header: Any                          # the image's std_msgs/Header, as the tail sent it
    tensors: dict[str, np.ndarray]
    received_ns: int                     # wall clock at the driver's callback
    sent_ns: int = 0                     # wall clock when the driver published the image


@dataclass
class Collected:
    outputs: dict[StampKey, Received] = field(default_factory=dict)
    inputs: dict[StampKey, np.ndarray] = field(default_factory=dict)   # the head's tensors
    order: list[StampKey] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class PipelineDriver:
    """Publishes images into a pipeline's namespace and collects what comes out of it."""

    def __init__(self, node: Any, manifest: Manifest, namespace: str = '/autodice',
                 qos_depth: int = 10, record_inputs: bool = False,
                 on_output: Callable[[Received], None] | None = None) -> None:
        from sensor_msgs.msg import Image

        self.node = node
        self.manifest = manifest
        self.namespace = namespace.rstrip('/') or ''
        self.collected = Collected()
        self._sent: dict[StampKey, int] = {}
        self._probes_out = 0
        self.probes = 0                      # probe images the head numbered before real frames
        self._on_output = on_output
        qos = qos_profile('reliable', qos_depth)
        self._image_pub = node.create_publisher(Image, self.topic(IMAGE_TOPIC), qos)
        self._subs = [TensorSubscriber(node, self.topic(OUTPUT_TOPIC), qos, None, self._output, self._error)]
        if record_inputs:
            self._subs.append(TensorSubscriber(node, self.topic(INPUT_TOPIC), qos, None,
                                               self._input, self._error))

    def topic(self, relative: str) -> str:
        return f'{self.namespace}/{relative}'

    # -- callbacks ------------------------------------------------------------------------------

    def _output(self, topic: str, frame: Frame) -> None:
        if frame.header.frame_id == PROBE_FRAME_ID:
            self._probes_out += 1
            return
        key = (int(frame.header.stamp.sec), int(frame.header.stamp.nanosec))
        tensors = {k: np.array(v) for k, v in frame.tensors.items()}
        received = Received(frame.frame, key, frame.header, tensors, time.time_ns(), self._sent.get(key, 0))
        self.collected.outputs[key] = received
        self.collected.order.append(key)
        if self._on_output is not None:
            self._on_output(received)

    def _input(self, topic: str, frame: Frame) -> None:
        if frame.header.frame_id == PROBE_FRAME_ID:
            return
        key = (int(frame.header.stamp.sec), int(frame.header.stamp.nanosec))
        self.collected.inputs[key] = np.array(next(iter(frame.tensors.values())))

    def _error(self, topic: str, exc: AutodiceError) -> None:
        self.collected.errors.append(f'{topic}: {exc}')

    # -- driving --------------------------------------------------------------------------------

    def connected(self) -> bool:
        return not self.unconnected()

    def unconnected(self) -> list[str]:
        """What the graph still lacks: pipeline links, the head's reader, the tail's output."""
        node = self.node
        missing = unconnected_links(node, self.manifest.links(), self.namespace or '/')
        if self._image_pub.get_subscription_count() < 1:
            missing.append(f'{self.topic(IMAGE_TOPIC)}: no camera head reading it')
        if node.count_publishers(self.topic(OUTPUT_TOPIC)) < 1:
            missing.append(f'{self.topic(OUTPUT_TOPIC)}: no tail publishing it')
        return missing

    def wait_connected(self, timeout: float = 60.0, probe_every: float = 0.5) -> None:
        """Block until a frame has gone through the whole pipeline.

        The graph showing every link is not enough: a publisher may not have matched the reader
        the graph already lists, and its first frames would be lost. So after the graph check the
        driver sends probe images (header.frame_id ``PROBE_FRAME_ID``, never collected) until one
        comes out of the tail: then every link on the way has carried data.
        """
        deadline = time.monotonic() + timeout
        if not spin_until(self.node, self.connected, timeout):
            raise AutodiceError(f'the pipeline in {self.namespace or "/"} did not connect within '
                                f'{timeout:.0f} s (are all boards running?); still missing: '
                                + '; '.join(self.unconnected()))
        from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg

        probes = 0
        while self._probes_out == 0:
            if time.monotonic() > deadline:
                raise AutodiceError(f'the pipeline in {self.namespace or "/"} is connected but '
                                    f'{probes} probe frames never came out of the tail')
            header = now_header(PROBE_FRAME_ID)
            self._image_pub.publish(to_image_msg(synthetic_pattern(probes, 8, 8), header))
            probes += 1
            spin_until(self.node, lambda: self._probes_out > 0, probe_every, step=0.005)
        self.probes = probes

    def send(self, image: Any) -> None:
        """Publish one sensor_msgs/Image (its header is kept: that is the frame's identity)."""
        key = (int(image.header.stamp.sec), int(image.header.stamp.nanosec))
        self._sent[key] = time.time_ns()
        self._image_pub.publish(image)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.node, lambda: False, seconds, step=0.005)

    def wait_for(self, count: int, timeout: float) -> bool:
        return spin_until(self.node, lambda: len(self.collected.outputs) >= count, timeout, step=0.005)

    def latency_ms(self) -> list[float]:
        """Image publish -> output received, per frame the driver sent."""
        return [(r.received_ns - r.sent_ns) / 1e6 for r in self.collected.outputs.values() if r.sent_ns]

"""``ros2 run autodice_ros camera_head``: ``sensor_msgs/Image`` -> the model's input tensor.

Subscribes ``image`` (remap it to your camera's topic), resizes and normalizes per the bundle's
manifest with numpy, numbers the frames, and publishes the input ``TensorList`` on ``input`` with
the image's header unchanged. An image that cannot be converted is logged (naming the field),
dropped and counted.

``max_in_flight`` > 0: at most that many frames between the head and the tail; an image that
arrives while they are all in flight is dropped here, unnumbered, before any board works on it
(see :mod:`autodice_ros.admission`). The head then subscribes to the tail's ``output`` to see
frames come out, and lets no frame in while either end of the pipeline is unmatched (no reader of
``input``, or no publisher of ``output`` seen): such a frame would be lost, or its way out
unseen, and would hold its place until ``in_flight_timeout`` (at start-up, while a camera
already streams).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import Image

from autodice_ros.admission import InFlightWindow
from autodice_ros.codec import Frame, TensorPublisher, TensorSubscriber
from autodice_ros.errors import AutodiceError, ImageError, TensorError
from autodice_ros.manifest import IMAGE_TOPIC, INPUT_TOPIC, OUTPUT_TOPIC, load_bundle
from autodice_ros.nodes.common import (
    Diagnostics,
    Stats,
    declare,
    declare_qos,
    declare_remote_boards,
    spin_node,
)
from autodice_ros.plan import link_boards
from autodice_ros.preprocess import RawImage, image_to_tensor
from autodice_ros.rosutil import stamp_ns, subscribe_decoding


class CameraHead(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('camera_head', **kwargs)
        self.stats = Stats()
        bundle_dir = declare(self, 'bundle', '', 'deployment bundle directory')
        period = declare(self, 'diagnostics_period', 1.0, 'seconds between /diagnostics reports')
        self._next_frame = declare(self, 'first_frame', 0, 'number given to the first image')
        manifest = load_bundle(bundle_dir).manifest
        self._pre = manifest.preprocess
        entry = next((t for t in manifest.inputs if t.name == self._pre.input), None)
        if entry is None:
            raise AutodiceError(f'{bundle_dir}: preprocess.input {self._pre.input!r} is not a model input')
        self._input = entry
        limit = declare(self, 'max_in_flight', 0,
                        'frames between the camera head and the tail at once; images beyond are '
                        'dropped at the head (0: no limit)')
        timeout = declare(self, 'in_flight_timeout', 2.0,
                          'seconds after which a frame that never came out of the tail stops counting '
                          "(or 3 x the last frame's head-to-tail time, if longer)")
        qos = declare_qos(self)
        remote = declare_remote_boards(self)
        try:
            self._window = InFlightWindow(limit, timeout) if limit else None
        except ValueError as exc:
            raise AutodiceError(f'parameter {exc}') from exc
        self._publisher = TensorPublisher(self, INPUT_TOPIC, qos)
        self._outputs: TensorSubscriber | None = None
        if self._window is not None:
            head_board, tail_board = link_boards(manifest)
            self._outputs = TensorSubscriber(self, OUTPUT_TOPIC, qos, list(manifest.outputs),
                                             self._on_output, self._on_bad_output,
                                             payload_first=remote and tail_board != head_board)
        subscribe_decoding(self, Image, IMAGE_TOPIC, lambda msg, _source_ns: self._on_image(msg),
                           declare_qos(self, 'image_qos'), self._on_undecodable)
        self._diagnostics = Diagnostics(self, self.stats, period, extra=self._in_flight_values)

    def _in_flight_values(self) -> dict[str, str]:
        if self._window is None:
            return {}
        return {'in_flight': str(self._window.in_flight), 'in_flight_lost': str(self._window.lost)}

    def _on_output(self, _topic: str, frame: Frame) -> None:
        assert self._window is not None
        trip = self._window.complete(frame.frame, time.monotonic())
        if trip is not None:
            self.stats.time('in_flight', trip * 1e3)

    def _on_bad_output(self, topic: str, exc: TensorError) -> None:
        self.get_logger().warning(f'topic {self.resolve_topic_name(topic)!r}: output ignored: {exc}')

    def _refused(self) -> bool:
        """Admission (``max_in_flight``): no room in the window, or the pipeline not matched at
        both ends yet; counted by reason."""
        assert self._window is not None and self._outputs is not None
        if self._window.full(time.monotonic()):
            self.stats.drops['in_flight_limit'] += 1
            return True
        if self._publisher.get_subscription_count() == 0 or self._outputs.get_publisher_count() == 0:
            self.stats.drops['not_connected'] += 1
            return True
        return False

    def _on_undecodable(self, exc: Exception) -> None:
        self.stats.drops['undecodable_image'] += 1
        self.get_logger().warning(f'topic {self.resolve_topic_name(IMAGE_TOPIC)!r}: a message that '
                                  f'does not deserialize as sensor_msgs/Image, dropped: {exc}')

    def _on_image(self, msg: Image) -> None:
        self.stats.frames_in += 1
        if self._window is not None and self._refused():
            return
        start = time.perf_counter()
        try:
            tensor = image_to_tensor(RawImage.from_msg(msg), self._pre, self._input.dtype)
        except ImageError as exc:
            self.stats.drops['invalid_image'] += 1
            self.get_logger().warning(f'topic {self.resolve_topic_name(IMAGE_TOPIC)!r}: image dropped: {exc}')
            return
        if tensor.shape != self._input.shape:
            self.stats.drops['invalid_image'] += 1
            self.get_logger().warning(f'image gives {tensor.shape}, the model wants {self._input.shape}')
            return
        self.stats.time('preprocess', (time.perf_counter() - start) * 1e3)
        if self._publisher.publish(msg.header, self._next_frame, {self._input.name: tensor}):
            if self._window is not None:
                self._window.admit(self._next_frame, time.monotonic())
            self.stats.frames_out += 1
            self.stats.time('age_out', (time.time_ns() - stamp_ns(msg.header)) / 1e6)
        else:
            self.stats.drops['publish_failed'] += 1
        self._next_frame += 1


def main(args: Sequence[str] | None = None) -> int:
    return spin_node(CameraHead, args)


if __name__ == '__main__':
    raise SystemExit(main())

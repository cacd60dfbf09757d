"""``ros2 run autodice_ros camera_head``: ``sensor_msgs/Image`` -> the model's input tensor.

Subscribes ``image`` (remap it to your camera's topic), resizes and normalizes per the bundle's
manifest with numpy, numbers the frames, and publishes the input ``TensorList`` on ``input`` with
the image's header unchanged. An image that cannot be converted is logged (naming the field),
dropped and counted.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import Image

from autodice_ros.codec import TensorPublisher
from autodice_ros.errors import AutodiceError, ImageError
from autodice_ros.manifest import IMAGE_TOPIC, INPUT_TOPIC, load_bundle
from autodice_ros.nodes.common import Diagnostics, Stats, declare, declare_qos, spin_node
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
        self._publisher = TensorPublisher(self, INPUT_TOPIC, declare_qos(self))
        subscribe_decoding(self, Image, IMAGE_TOPIC, lambda msg, _source_ns: self._on_image(msg),
                           declare_qos(self, 'image_qos'), self._on_undecodable)
        self._diagnostics = Diagnostics(self, self.stats, period)

    def _on_undecodable(self, exc: Exception) -> None:
        self.stats.drops['undecodable_image'] += 1
        self.get_logger().warning(f'topic {self.resolve_topic_name(IMAGE_TOPIC)!r}: a message that '
                                  f'does not deserialize as sensor_msgs/Image, dropped: {exc}')

    def _on_image(self, msg: Image) -> None:
        self.stats.frames_in += 1
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
            self.stats.frames_out += 1
            self.stats.time('age_out', (time.time_ns() - stamp_ns(msg.header)) / 1e6)
        else:
            self.stats.drops['publish_failed'] += 1
        self._next_frame += 1


def main(args: Sequence[str] | None = None) -> int:
    return spin_node(CameraHead, args)


if __name__ == '__main__':
    raise SystemExit(main())

"""``ros2 run autodice_ros image_source``: a camera stand-in publishing ``sensor_msgs/Image``.

Plays a folder of images (PNG/JPEG, sorted by name, looped) or a synthetic test pattern at a
fixed rate on ``image``, stamped with the wall clock like a camera driver. The pattern is a
deterministic function of the frame index, so runs are repeatable.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from autodice_ros.errors import ImageError
from autodice_ros.manifest import IMAGE_TOPIC, load_bundle
from autodice_ros.nodes.common import declare, declare_qos, spin_node
from autodice_ros.rosutil import links_connected, now_header

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm')


def synthetic_pattern(index: int, height: int, width: int) -> np.ndarray:
    """An rgb8 frame: colour gradients plus a square that moves with ``index``."""
    y, x = np.meshgrid(np.linspace(0, 255, height, dtype=np.float32),
                       np.linspace(0, 255, width, dtype=np.float32), indexing='ij')
    phase = (index * 7) % 256
    img = np.stack([(x + phase) % 256, (y + 2 * phase) % 256, ((x + y) / 2 + 3 * phase) % 256], axis=2)
    side = max(4, min(height, width) // 4)
    top = (index * 5) % max(1, height - side)
    left = (index * 11) % max(1, width - side)
    img[top:top + side, left:left + side] = (255 - phase, phase, 128)
    return img.astype(np.uint8)


def load_folder(folder: Path) -> list[np.ndarray]:
    """Every image in ``folder`` as rgb8 arrays (Pillow comes with matplotlib)."""
    from PIL import Image as PILImage

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f'{folder}: no images ({", ".join(IMAGE_SUFFIXES)}) in this folder')
    return [np.asarray(PILImage.open(p).convert('RGB')) for p in files]


def to_image_msg(pixels: np.ndarray, header: Any) -> Image:
    msg = Image(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding='rgb8',
                is_bigendian=0, step=pixels.shape[1] * 3)
    msg.data = pixels.tobytes()
    return msg


class ImageSource(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('image_source', **kwargs)
        folder = declare(self, 'folder', '', 'folder of images to play; empty: synthetic pattern')
        rate = declare(self, 'rate', 5.0, 'frames per second')
        self._count = declare(self, 'count', 0, 'frames to publish before going quiet (0: forever)')
        height = declare(self, 'height', 480, 'synthetic pattern height')
        width = declare(self, 'width', 640, 'synthetic pattern width')
        self._frame_id = declare(self, 'frame_id', 'camera', 'header.frame_id of every image')
        self._wait = declare(self, 'wait_for_subscriber', True, 'hold frames until someone listens')
        bundle = declare(self, 'bundle', '', 'hold frames until every link of this bundle\'s pipeline '
                         'is connected (empty: only wait for a subscriber)')
        self._links = load_bundle(bundle).manifest.links() if bundle else {}
        self._frames = load_folder(Path(folder)) if folder else None
        self._size = (height, width)
        self._index = 0
        self._publisher = self.create_publisher(Image, IMAGE_TOPIC, declare_qos(self))
        self._timer = self.create_timer(1.0 / rate, self._tick)

    def _waiting(self) -> bool:
        if not self._wait:
            return False
        if self._publisher.get_subscription_count() == 0:
            return True
        if self._links and not links_connected(self, self._links, self.get_namespace()):
            return True
        self._wait = False      # connected once: from now on frames flow like a camera's
        return False

    def _tick(self) -> None:
        if self._count and self._index >= self._count:
            return
        if self._waiting():
            return
        pixels = (self._frames[self._index % len(self._frames)] if self._frames is not None
                  else synthetic_pattern(self._index, *self._size))
        self._publisher.publish(to_image_msg(pixels, now_header(self._frame_id)))
        self._index += 1


def main(args: Sequence[str] | None = None) -> int:
    return spin_node(ImageSource, args)


if __name__ == '__main__':
    raise SystemExit(main())

"""``sensor_msgs/Image`` -> the model's input tensor, with numpy only (no cv_bridge, no OpenCV).

The camera head calls :func:`image_to_tensor` with the manifest's :class:`Preprocess`; everything
is validated first (encoding, size, ``step``, byte count) so a bad image is dropped with a
message that names the field, never half-processed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from autodice_ros.errors import ImageError
from autodice_ros.manifest import Preprocess

CHANNELS = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}
MAX_SIDE = 16384   # refuse absurd declared sizes before touching the payload


@dataclass(frozen=True)
class RawImage:
    """The fields of a sensor_msgs/Image that matter here (so tests need no ROS message)."""

    encoding: str
    height: int
    width: int
    step: int
    data: Any            # bytes-like

    @classmethod
    def from_msg(cls, msg: Any) -> RawImage:
        return cls(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def pixels(image: RawImage) -> np.ndarray:
    """An (H, W, C) uint8 view of the image, honouring row padding in ``step``."""
    if image.encoding not in CHANNELS:
        raise ImageError(f'field encoding: {image.encoding!r} is not supported '
                         f'(supported: {", ".join(CHANNELS)})')
    if not (0 < image.height <= MAX_SIDE and 0 < image.width <= MAX_SIDE):
        raise ImageError(f'field height/width: {image.height}x{image.width} is empty or larger '
                         f'than {MAX_SIDE}')
    channels = CHANNELS[image.encoding]
    row = image.width * channels
    if image.step < row:
        raise ImageError(f'field step: {image.step} is less than width * channels = {row}')
    needed = image.step * (image.height - 1) + row
    if len(image.data) < needed:
        raise ImageError(f'field data: {len(image.data)} bytes, but {image.height} rows of step '
                         f'{image.step} need {needed}')
    flat = np.frombuffer(image.data, dtype=np.uint8, count=needed)
    rows = np.lib.stride_tricks.as_strided(flat, shape=(image.height, row), strides=(image.step, 1))
    return rows.reshape(image.height, image.width, channels)


@lru_cache(maxsize=16)
def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sample positions (half-pixel centres, like OpenCV's INTER_LINEAR) for one axis."""
    pos = (np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32, separable bilinear interpolation."""
    src = img.astype(np.float32, copy=False)
    if img.shape[0] != height:
        lo, hi, w = _axis_weights(img.shape[0], height)
        src = src[lo] * (1 - w)[:, None, None] + src[hi] * w[:, None, None]
    if img.shape[1] != width:
        lo, hi, w = _axis_weights(img.shape[1], width)
        src = src[:, lo] * (1 - w)[None, :, None] + src[:, hi] * w[None, :, None]
    return src


def image_to_tensor(image: RawImage, pre: Preprocess, dtype: str = 'float32') -> np.ndarray:
    """The model input for one image: resized, channel order and layout per the manifest, batch 1."""
    px = pixels(image)
    want = len(pre.mean)
    if px.shape[2] == 1 and want == 3:
        px = np.repeat(px, 3, axis=2)
    elif px.shape[2] == 3 and want == 1:
        px = px.mean(axis=2, keepdims=True)
    elif image.encoding != 'mono8' and image.encoding[:3] != pre.channel_order:
        px = px[:, :, ::-1]
    x = resize_bilinear(px, pre.height, pre.width)
    x = (x * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == 'NCHW':
        x = x.transpose(2, 0, 1)
    elif pre.layout != 'NHWC':
        raise ImageError(f'preprocess layout {pre.layout!r} is not NCHW or NHWC')
    return np.ascontiguousarray(x[None], dtype=dtype)

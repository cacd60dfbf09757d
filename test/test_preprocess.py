"""Image -> tensor without cv_bridge: encodings, row padding, resize, normalization, bad images."""
from __future__ import annotations

import numpy as np
import pytest

from autodice_ros.errors import ImageError
from autodice_ros.manifest import Postprocess, Preprocess
from autodice_ros.postprocess import softmax, top_k
from autodice_ros.preprocess import RawImage, image_to_tensor, pixels, resize_bilinear

PLAIN = Preprocess(input='x', height=4, width=6, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def rgb(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw(px: np.ndarray, encoding: str = 'rgb8', pad: int = 0) -> RawImage:
    h, w, c = px.shape
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, :w * c] = px.reshape(h, w * c)
    return RawImage(encoding, h, w, w * c + pad, rows.tobytes())


def test_row_padding_in_step_is_skipped() -> None:
    px = rgb(5, 7)
    assert np.array_equal(pixels(raw(px, pad=3)), px)


def test_same_size_rgb_is_identity_in_nchw() -> None:
    px = rgb(4, 6)
    x = image_to_tensor(raw(px), PLAIN)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    assert np.array_equal(x[0].transpose(1, 2, 0), px.astype(np.float32))


def test_bgr_input_is_reordered_for_an_rgb_model_and_nhwc_layout_kept() -> None:
    px = rgb(4, 6)
    nhwc = Preprocess(**{**PLAIN.__dict__, 'layout': 'NHWC'})
    x = image_to_tensor(raw(px[:, :, ::-1].copy(), 'bgr8'), nhwc)
    assert x.shape == (1, 4, 6, 3)
    assert np.array_equal(x[0], px.astype(np.float32))


def test_mono_is_replicated_and_normalization_applied() -> None:
    px = np.full((4, 6, 1), 51, np.uint8)
    pre = Preprocess(input='x', height=4, width=6, scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    x = image_to_tensor(raw(px, 'mono8'), pre)
    assert np.allclose(x[0, :, 0, 0], [(0.2 - 0.1) / 0.5, 0.0, (0.2 - 0.3) / 0.5], atol=1e-6)


def test_bilinear_resize_keeps_constant_images_and_linear_ramps() -> None:
    const = np.full((10, 20, 3), 77, np.uint8)
    assert np.allclose(resize_bilinear(const, 224, 224), 77)
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (2, 1, 1)) * 10
    out = resize_bilinear(ramp, 2, 16)[0, :, 0]
    assert np.all(np.diff(out) >= 0) and out[0] == 0 and out[-1] == 70


@pytest.mark.parametrize(('image', 'field'), [
    (RawImage('rgba8', 2, 2, 8, b'\0' * 16), 'encoding'),
    (RawImage('rgb8', 2, 2, 5, b'\0' * 12), 'step'),
    (RawImage('rgb8', 2, 2, 6, b'\0' * 11), 'data'),
    (RawImage('rgb8', 0, 2, 6, b''), 'height'),
    (RawImage('mono8', 10**6, 10**6, 10**6, b'\0'), 'height'),
])
def test_bad_images_name_the_field(image: RawImage, field: str) -> None:
    with pytest.raises(ImageError, match=field):
        image_to_tensor(image, PLAIN)


def test_top_k_orders_scores_and_applies_softmax_and_labels() -> None:
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5]], np.float32)
    best = top_k(logits, Postprocess(output='y', softmax=True, top_k=3), ['a', 'b', 'c', 'd', 'e'])
    assert best.class_ids == [1, 3, 4] and best.labels == ['b', 'd', 'e']
    probs = softmax(logits.reshape(-1))
    assert np.isclose(probs.sum(), 1.0) and np.isclose(best.scores[0], probs[1])
    raw_scores = top_k(logits, Postprocess(output='y', softmax=False, top_k=10))
    assert raw_scores.class_ids == [1, 3, 4, 0, 2] and raw_scores.scores[0] == pytest.approx(3.0)
    assert raw_scores.labels == []

"""The tail's view of a classifier's output: softmax (when the model lacks one) and top-k."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodice_ros.errors import TensorError
from autodice_ros.manifest import Postprocess


@dataclass(frozen=True)
class TopK:
    class_ids: list[int]
    scores: list[float]
    labels: list[str]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)


def top_k(output: np.ndarray, post: Postprocess, labels: list[str] | None = None) -> TopK:
    """Best ``post.top_k`` classes of a [1, N] (or [N], [1, N, 1, 1]) score tensor."""
    scores = np.asarray(output).reshape(-1)
    if scores.size == 0:
        raise TensorError(f'tensor {post.output!r}: empty output, nothing to rank')
    if post.softmax:
        scores = softmax(scores)
    k = min(post.top_k, scores.size)
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind='stable')]
    names = [labels[i] if labels and i < len(labels) else '' for i in best] if labels else []
    return TopK([int(i) for i in best], [float(scores[i]) for i in best], names)

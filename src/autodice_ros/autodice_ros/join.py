"""Bounded per-frame join of a stage's inputs arriving on several topics.

A stage whose sub-model reads tensors from several producing partitions gets one ``TensorList``
per producer per frame. :class:`FrameJoiner` pairs them by the exact frame key (image stamp +
frame number) and never combines tensors of different frames. Each topic delivers in order, so
once frame N is complete every older incomplete frame can never complete: it is dropped and
counted ('stale'). The cache holds at most ``capacity`` frames ('overflow' drops the oldest).
A single-topic stage passes frames straight through (no join latency).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from autodice_ros.codec import Frame, FrameKey


class FrameJoiner:
    def __init__(self, topics: Sequence[str], capacity: int = 8,
                 drops: Counter[str] | None = None) -> None:
        if not topics:
            raise ValueError('a join needs at least one topic')
        if capacity < 1:
            raise ValueError(f'join capacity {capacity}: must be at least 1')
        self.topics = tuple(dict.fromkeys(topics))
        self.capacity = capacity
        self.drops: Counter[str] = drops if drops is not None else Counter()  # shared with the node
        self._pending: dict[FrameKey, dict[str, Frame]] = {}
        self._last: FrameKey | None = None

    @property
    def depth(self) -> int:
        """Frames waiting for a missing input."""
        return len(self._pending)

    def add(self, topic: str, frame: Frame) -> Frame | None:
        """Add one topic's part of a frame; returns the whole frame once every topic has sent it."""
        if topic not in self.topics:
            raise ValueError(f'topic {topic!r} is not an input of this join ({", ".join(self.topics)})')
        if len(self.topics) == 1:
            return frame
        key = frame.key
        if self._last is not None and key <= self._last:
            self.drops['late'] += 1        # its frame was already completed or given up
            return None
        parts = self._pending.setdefault(key, {})
        if topic in parts:
            self.drops['duplicate'] += 1
            return None
        parts[topic] = frame
        if len(parts) < len(self.topics):
            while len(self._pending) > self.capacity:
                del self._pending[min(self._pending)]
                self.drops['overflow'] += 1
            return None
        del self._pending[key]
        for old in [k for k in self._pending if k < key]:
            del self._pending[old]
            self.drops['stale'] += 1
        self._last = key
        tensors = {}
        for topic_name in self.topics:
            tensors.update(parts[topic_name].tensors)
        return Frame(frame.header, frame.frame, tensors)

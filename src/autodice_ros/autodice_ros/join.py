"""Bounded per-frame join of a stage's inputs arriving on several topics.

A stage whose sub-model reads tensors from several producing partitions gets one ``TensorList``
per producer per frame. :class:`FrameJoiner` pairs them by the exact frame key (image stamp +
frame number) and never combines tensors of different frames.

Order comes from arrival, not from stamps (a bag played twice, or simulated time, repeats or
rewinds stamps): every producer emits frames in the head's order and each topic delivers in
order, so once frame N is complete, every frame that started arriving before N and is still
incomplete can never complete. It is dropped and counted ('stale'). The cache holds at most
``capacity`` frames ('overflow' drops the oldest); a part of a frame already completed or given
up arrives 'late' and is dropped. A single-topic stage passes frames straight through.
"""
from __future__ import annotations

from collections import Counter, deque
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
        self._pending: dict[FrameKey, dict[str, Frame]] = {}    # in order of first arrival
        self._finished: deque[FrameKey] = deque(maxlen=16 * capacity)
        self._finished_set: set[FrameKey] = set()

    @property
    def depth(self) -> int:
        """Frames waiting for a missing input."""
        return len(self._pending)

    def _finish(self, key: FrameKey) -> None:
        if len(self._finished) == self._finished.maxlen:
            self._finished_set.discard(self._finished[0])
        self._finished.append(key)
        self._finished_set.add(key)

    def add(self, topic: str, frame: Frame) -> Frame | None:
        """Add one topic's part of a frame; returns the whole frame once every topic has sent it."""
        if topic not in self.topics:
            raise ValueError(f'topic {topic!r} is not an input of this join ({", ".join(self.topics)})')
        if len(self.topics) == 1:
            return frame
        key = frame.key
        if key in self._finished_set:
            self.drops['late'] += 1        # its frame was already completed or given up
            return None
        parts = self._pending.setdefault(key, {})
        if topic in parts:
            self.drops['duplicate'] += 1
            return None
        parts[topic] = frame
        if len(parts) < len(self.topics):
            while len(self._pending) > self.capacity:
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                self._finish(oldest)
                self.drops['overflow'] += 1
            return None
        for earlier in list(self._pending):
            if earlier == key:
                break
            del self._pending[earlier]
            self._finish(earlier)
            self.drops['stale'] += 1
        del self._pending[key]
        self._finish(key)
        tensors = {}
        for topic_name in self.topics:
            tensors.update(parts[topic_name].tensors)
        return Frame(frame.header, frame.frame, tensors)

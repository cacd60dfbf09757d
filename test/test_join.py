"""The per-frame join: pairs by exact key, never mixes frames, bounded, counts every drop."""
from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header

from autodice_ros.codec import Frame
from autodice_ros.join import FrameJoiner


def part(frame: int, name: str, sec: int = 100) -> Frame:
    header = Header()
    header.stamp.sec, header.stamp.nanosec = sec, frame * 1000
    return Frame(header, frame, {name: np.full(2, frame)})


def test_single_topic_passes_straight_through() -> None:
    join = FrameJoiner(['a'])
    frame = part(1, 'x')
    assert join.add('a', frame) is frame and join.depth == 0


def test_joins_by_frame_in_any_arrival_order() -> None:
    join = FrameJoiner(['a', 'b'])
    assert join.add('b', part(1, 'y')) is None
    assert join.add('a', part(2, 'x')) is None
    done = join.add('a', part(1, 'x'))
    assert done is not None and done.frame == 1
    assert done.tensors['x'][0] == 1 and done.tensors['y'][0] == 1
    done2 = join.add('b', part(2, 'y'))
    assert done2 is not None and set(done2.tensors) == {'x', 'y'}
    assert all(int(v[0]) == 2 for v in done2.tensors.values())
    assert not join.drops


def test_same_frame_number_with_another_stamp_is_another_frame() -> None:
    join = FrameJoiner(['a', 'b'])
    assert join.add('a', part(5, 'x', sec=1)) is None
    assert join.add('b', part(5, 'y', sec=2)) is None
    assert join.depth == 2


def test_incomplete_older_frames_are_dropped_as_stale_and_late_parts_refused() -> None:
    join = FrameJoiner(['a', 'b'])
    join.add('a', part(1, 'x'))          # frame 1 loses its 'b' part
    join.add('a', part(2, 'x'))
    assert join.add('b', part(2, 'y')) is not None
    assert join.drops['stale'] == 1 and join.depth == 0
    assert join.add('b', part(1, 'y')) is None
    assert join.drops['late'] == 1


def test_capacity_bounds_the_cache() -> None:
    join = FrameJoiner(['a', 'b'], capacity=3)
    for i in range(10):
        join.add('a', part(i, 'x'))
    assert join.depth == 3 and join.drops['overflow'] == 7


def test_duplicates_and_unknown_topics() -> None:
    join = FrameJoiner(['a', 'b'])
    join.add('a', part(1, 'x'))
    assert join.add('a', part(1, 'x')) is None and join.drops['duplicate'] == 1
    with pytest.raises(ValueError, match="'c'"):
        join.add('c', part(1, 'z'))


def test_order_comes_from_arrival_so_rewound_stamps_still_join() -> None:
    """A bag played again (or simulated time) rewinds stamps; the join must not call them late."""
    join = FrameJoiner(['a', 'b'])
    assert join.add('a', part(1, 'x', sec=500)) is None
    assert join.add('b', part(1, 'y', sec=500)) is not None
    assert join.add('a', part(2, 'x', sec=100)) is None
    done = join.add('b', part(2, 'y', sec=100))
    assert done is not None and done.frame == 2 and not join.drops

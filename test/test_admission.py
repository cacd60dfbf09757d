"""The camera head's in-flight window: what it admits, retires and gives up (pure logic; the
pipeline behaviour is in test_overload.py)."""
from __future__ import annotations

import pytest

from autodice_ros.admission import InFlightWindow


def test_a_full_window_refuses_until_a_frame_comes_out() -> None:
    window = InFlightWindow(2, timeout=10.0)
    for frame in (0, 1):
        assert not window.full(now=0.0)
        window.admit(frame, now=0.0)
    assert window.full(now=1.0) and window.in_flight == 2
    assert window.complete(0, now=1.5) == pytest.approx(1.5)
    assert not window.full(now=1.5) and window.in_flight == 1 and window.lost == 0


def test_a_frame_that_comes_out_retires_every_earlier_one_as_lost() -> None:
    window = InFlightWindow(3, timeout=10.0)
    for frame in (5, 6, 7):
        window.admit(frame, now=0.0)
    assert window.complete(7, now=2.0) == pytest.approx(2.0)    # 5 and 6 were dropped on the way
    assert window.in_flight == 0 and window.lost == 2
    assert window.complete(6, now=2.1) is None                  # late: no longer counted
    assert window.complete(99, now=2.1) is None and window.lost == 2


def test_frames_that_never_come_out_are_given_up_after_the_timeout_or_three_trips() -> None:
    window = InFlightWindow(1, timeout=1.0)
    window.admit(0, now=0.0)
    assert window.full(now=0.9)
    assert not window.full(now=1.1) and window.lost == 1        # given up after the timeout
    window.admit(1, now=1.1)
    window.complete(1, now=5.1)                                 # a 4 s trip: wait up to 12 s now
    window.admit(2, now=6.0)
    assert window.full(now=17.0)
    assert not window.full(now=18.5) and window.lost == 2


def test_a_given_up_frame_that_comes_out_late_sets_the_give_up_time_and_is_not_lost() -> None:
    window = InFlightWindow(1)                                  # the default: 2 s
    window.admit(0, now=0.0)                                    # a slow first frame (warm-up)
    assert not window.full(now=2.1) and window.lost == 1
    window.admit(1, now=2.1)
    assert window.complete(0, now=5.0) == pytest.approx(5.0)    # late, not lost: trips take 5 s
    assert window.lost == 0 and window.in_flight == 1
    assert window.full(now=16.0)                                # frame 1 may take 15 s now
    assert window.complete(1, now=8.0) == pytest.approx(5.9)
    assert window.complete(0, now=8.1) is None and window.lost == 0   # counted once


@pytest.mark.parametrize(('limit', 'timeout', 'what'), [(-1, 1.0, 'max_in_flight -1'),
                                                         (0, 1.0, 'max_in_flight 0'),
                                                         (1, 0.0, 'in_flight_timeout 0')])
def test_bad_settings_are_refused_by_name(limit: int, timeout: float, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        InFlightWindow(limit, timeout)

"""How many frames the camera head lets into the pipeline at once (``max_in_flight``).

Why: a camera faster than the pipeline otherwise makes every link drop frames on its own
(KEEP_LAST). A layer-wise pipeline shrugs that off, but in a within-layer split (LOP, LIP, tiles)
every split layer joins pieces of the same frame from several boards: when each board drops
different frames, the joins rarely complete and almost nothing comes out (VGG19 LOP on 3 boards
with the default depth 10: 100 % of frames lost or late, 11-13 s latency). Dropping at the head
instead -- before a frame costs any board work -- keeps every board on the same frames, and
bounds the memory and latency that frames in flight cost.

The tail's ``output`` says which frame came out. Frames leave the pipeline in the head's order,
so a frame that comes out also retires every earlier frame still counted (lost on the way). A
frame that never comes out is given up after ``timeout`` seconds, or 3 x the last frame's
head-to-tail time if that is longer, so a slow pipeline is not sent a second frame while its
first is still on the way. The default timeout is short (2 s) because a lost frame stalls the
head that long: at start-up, before any trip is known, and after a stage restarts. A given-up
frame that comes out after all still gives its trip time (and is not counted lost): a slow first
frame sets the give-up time for the next ones.
"""
from __future__ import annotations

from collections import OrderedDict


class InFlightWindow:
    """At most ``limit`` frames between the head and the tail; times are in seconds."""

    GIVEN_UP_KEPT = 64      # given-up frames remembered, to time them if they come out late

    def __init__(self, limit: int, timeout: float = 2.0) -> None:
        if limit < 1:
            raise ValueError(f'max_in_flight {limit}: must be 0 (no limit) or more')
        if timeout <= 0:
            raise ValueError(f'in_flight_timeout {timeout}: must be positive')
        self.limit = limit
        self.timeout = timeout
        self.lost = 0                  # frames that never came out (overtaken or timed out)
        self._admitted: OrderedDict[int, float] = OrderedDict()   # frame -> admitted at
        self._given_up: OrderedDict[int, float] = OrderedDict()   # timed out: frame -> admitted at
        self._last_trip = 0.0

    @property
    def in_flight(self) -> int:
        return len(self._admitted)

    def _give_up_after(self) -> float:
        return max(self.timeout, 3.0 * self._last_trip)

    def full(self, now: float) -> bool:
        """No room for another frame now (frames past their time are given up first)."""
        deadline = now - self._give_up_after()
        while self._admitted and next(iter(self._admitted.values())) < deadline:
            frame, admitted = self._admitted.popitem(last=False)
            self._given_up[frame] = admitted
            if len(self._given_up) > self.GIVEN_UP_KEPT:
                self._given_up.popitem(last=False)
            self.lost += 1
        return len(self._admitted) >= self.limit

    def admit(self, frame: int, now: float) -> None:
        """``frame`` entered the pipeline (the head published it)."""
        self._admitted[frame] = now

    def complete(self, frame: int, now: float) -> float | None:
        """``frame`` came out of the tail: its head-to-tail seconds, or None if the head did not
        send it (or retired it when a later frame came out first)."""
        if frame in self._given_up:        # slower than its give-up time, not lost
            self.lost -= 1
            self._last_trip = now - self._given_up.pop(frame)
            return self._last_trip
        if frame not in self._admitted:
            return None
        while True:
            earlier, admitted = self._admitted.popitem(last=False)
            if earlier == frame:
                break
            self.lost += 1
        self._last_trip = now - admitted
        return self._last_trip

"""The same-board fast path's machinery: shared-memory slots, leases, the reaper, the local bus.

No ROS here; :class:`~autodice_ros.codec.TensorPublisher` and
:class:`~autodice_ros.codec.TensorSubscriber` put it behind the one transport interface.

Slots. A publisher writes each frame's tensors into one slot of a ring; every slot is its own
POSIX shared-memory segment ``/dev/shm/autodice_<pid>_<start>_<pidns>_<n>`` (owner pid, its start
time and pid namespace, so a reaper can tell a live owner from a dead one or a reused pid). A slot
starts with a 64-byte header (magic, sequence number), then the tensors, each 64-byte aligned.

Seqlock plus leases. The writer *claims* a slot (an exclusive ``flock``, the sequence made odd)
and may send the descriptor, which names the even number the slot will have, right away: the copy
then runs while the descriptor travels (a cold multi-MB copy takes about as long as the trip). It
*fills* the slot: copies the tensors in, makes the sequence even, unlocks. A reader takes a shared
``flock``. If the writer still holds the slot with the sequence just below the descriptor's (or
equal to it, while unlocking), it is on this very frame: the reader waits for it, a bounded time;
any other number means the slot is being rewritten: drop. Once locked, the reader checks the
sequence (another number means the slot was rewritten since: drop). It hands out
``np.frombuffer`` views and keeps its shared lock while any of them is alive (a *lease*); the
writer skips leased slots, so data a reader holds never changes underneath it. Locks die with
their process, so a crashed reader never blocks a writer, and a writer that dies mid-copy leaves
an odd sequence no descriptor names.

Cleanup. Writers unlink their segments on ``close`` and at interpreter exit. A process killed
outright leaves them behind: :func:`reap` (run whenever a publisher or subscriber starts, and when
a subscriber loses a publisher) unlinks every autodice segment whose owner is dead.

In-process. :data:`LOCAL_BUS` knows the fast-path publishers and subscribers of this process by
topic; a publisher hands its (read-only) arrays straight to local subscribers, which then listen
to no DDS topic for it but announce themselves on ``<topic>/_local`` (see :func:`side_topics`).
"""
from __future__ import annotations

import fcntl
import itertools
import math
import mmap
import os
import re
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SHM_DIR = Path('/dev/shm')
PREFIX = 'autodice_'
MAGIC = b'ADSHM001'
HEADER_SIZE = 64            # magic (8 bytes), sequence (uint64), then padding to 64
ALIGN = 64                  # every tensor starts on a cache line (and any dtype's alignment)
GRANULE = 1 << 20           # slot sizes are rounded up to whole MiB
_SEQUENCE = struct.Struct('<Q')
_SEQUENCE_AT = 8
_NAME = re.compile(r'^autodice_(\d+)_(\d+)_(\d+)_[0-9a-f]+$')
_counter = itertools.count()
WRITE_WAIT = 0.25           # seconds a reader waits for a writer still copying the named frame
_SPIN = 2e-3                # it first polls without sleeping (yielding the CPU) this long: a
                            # sleep overshoots by tens of microseconds, and a cold 3 MB copy ends
                            # a few hundred microseconds after the descriptor arrives
_POLL_FIRST, _POLL_MAX = 50e-6, 1e-3    # then sleeps: starts short, doubles to this


class SlotUnavailableError(Exception):
    """This process cannot map the publisher's slots (other user, other /dev/shm): use the payload."""


class SlotOverwrittenError(Exception):
    """The slot no longer holds the frame the descriptor names (rewritten, or gone)."""


# -- identities -------------------------------------------------------------------------------

def _ns_inode(kind: str) -> str:
    try:
        return os.readlink(f'/proc/self/ns/{kind}').split('[')[-1].rstrip(']')
    except OSError:
        return '?'


@cache
def host_identity() -> str:
    """Who can map this process's segments: same boot, host, mount and network namespace.

    The network namespace is part of it on purpose: boards emulated as network namespaces on one
    machine must keep crossing the (emulated) wire, not shared memory.
    """
    try:
        boot = Path('/proc/sys/kernel/random/boot_id').read_text().strip()
    except OSError:
        boot = '?'
    return f'{boot}/{socket.gethostname()}/mnt:{_ns_inode("mnt")}/net:{_ns_inode("net")}'


def available() -> bool:
    """Whether this machine has POSIX shared memory where the fast path expects it."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None when it is gone."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


@cache
def _owner_tag() -> str:
    pid = os.getpid()
    return f'{pid}_{_start_time(pid) or 0}_{_ns_inode("pid")}'


def segment_owner_alive(name: str) -> bool | None:
    """True/False for an autodice segment of this pid namespace; None when it cannot be judged."""
    match = _NAME.match(name)
    if match is None or match.group(3) != _ns_inode('pid'):
        return None
    pid, start = int(match.group(1)), int(match.group(2))
    return _start_time(pid) == start


def reap(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink every autodice segment whose owner process is dead; returns the names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        if name.startswith(PREFIX) and segment_owner_alive(name) is False:
            try:
                os.unlink(shm_dir / name)
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def own_segments(shm_dir: Path = SHM_DIR, pid: int | None = None) -> list[str]:
    """Names of the autodice segments a process (default: this one) owns."""
    prefix = f'{PREFIX}{pid if pid is not None else os.getpid()}_'
    try:
        return sorted(n for n in os.listdir(shm_dir) if n.startswith(prefix))
    except OSError:
        return []


# -- writing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where one tensor goes in a slot: what the descriptor tells the reader."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int


@dataclass(frozen=True, eq=False)
class Layout:
    """Where each tensor of a frame goes in a slot (the same for every frame of a fixed-shape stream,
    so publishers compute it once and slots keep their views for it)."""

    placements: tuple[Placement, ...]
    size: int


class Written(NamedTuple):
    segment: str
    sequence: int
    layout: Layout

    @property
    def placements(self) -> tuple[Placement, ...]:
        return self.layout.placements


def layout(arrays: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> Layout:
    """Aligned offsets of ``arrays`` in a slot's data area, and the bytes they need."""
    placements, offset = [], 0
    for name, arr in arrays:
        placements.append(Placement(name, arr.dtype.newbyteorder('<'), tuple(arr.shape), offset))
        offset += -(-arr.nbytes // ALIGN) * ALIGN
    return Layout(tuple(placements), offset)


class _Segment:
    """One slot's segment as its writer holds it: fd (for the lock) and a writable mapping."""

    def __init__(self, shm_dir: Path, capacity: int) -> None:
        self.name = f'{PREFIX}{_owner_tag()}_{next(_counter):x}'
        self.path = shm_dir / self.name
        size = HEADER_SIZE + capacity
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(self.fd, 0, size)   # ENOSPC now, not SIGBUS on a later write
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except OSError:
            os.close(self.fd)
            os.unlink(self.path)
            raise
        self.map[:8] = MAGIC
        self.capacity = capacity
        self.sequence = 0
        # one aligned 8-byte store per change (struct.pack_into zero-fills the field first: a reader
        # in another process could see 0 for a moment and call the frame overwritten)
        self._sequence_word = np.frombuffer(self.map, np.dtype('<u8'), 1, _SEQUENCE_AT)
        self.layout: Layout | None = None
        self.views: list[np.ndarray[Any, Any]] = []

    def views_for(self, where: Layout) -> list[np.ndarray[Any, Any]]:
        """Writable views of this slot for a layout (kept: the next frame likely has the same)."""
        if where is not self.layout:
            self.views = [np.frombuffer(self.map, p.dtype, math.prod(p.shape), HEADER_SIZE + p.offset)
                          .reshape(p.shape) for p in where.placements]
            self.layout = where
        return self.views

    def set_sequence(self, value: int) -> None:
        self.sequence = value
        self._sequence_word[0] = value

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:      # a reaper or a test got there first
            pass
        self.views = []                # the mapping cannot close while views of it exist
        del self._sequence_word
        try:
            self.map.close()
        except BufferError:            # a producer still holds views it borrowed: unmapped with them
            pass
        os.close(self.fd)


def _close_all(owner: int, segments: list[_Segment | None]) -> None:
    if os.getpid() != owner:     # a forked child exiting must not unlink its parent's slots
        return
    for segment in segments:
        if segment is not None:
            segment.close()
    segments.clear()


class Claim(NamedTuple):
    """A slot taken for one frame (locked, sequence odd) until :meth:`SlotRing.fill` copies it in;
    ``written`` is what its descriptor names, valid to send before the copy. (A tuple: a frozen
    dataclass costs more than the rest of ``claim`` on a cold frame path.)"""

    slot: _Segment
    written: Written


class SlotRing:
    """A publisher's ring of shared-memory slots (created on first use, grown when a frame is bigger).

    ``write`` copies one frame in (the fast path's only copy) and returns where it went, or None
    when every slot is leased by readers. ``claim`` then ``fill`` do the same in two steps, so
    the descriptor can be sent between them.
    """

    def __init__(self, slots: int, shm_dir: Path = SHM_DIR) -> None:
        if slots < 1:
            raise ValueError(f'fast path slots {slots}: must be at least 1')
        self._dir = shm_dir
        self._slots: list[_Segment | None] = [None] * slots
        self._next = 0
        self._finalizer = weakref.finalize(self, _close_all, os.getpid(), self._slots)   # at exit too

    @property
    def segments(self) -> list[str]:
        return [s.name for s in self._slots if s is not None]

    def write(self, arrays: Sequence[tuple[str, np.ndarray[Any, Any]]],
              where: Layout | None = None) -> Written | None:
        """``where``: the arrays' :func:`layout`, when the caller keeps it from frame to frame."""
        claim = self.claim(where if where is not None else layout(arrays))
        if claim is None:
            return None
        self.fill(claim, arrays)
        return claim.written

    def claim(self, where: Layout) -> Claim | None:
        """The next slot no reader holds, locked and marked as being written; None if all are held.
        The caller must :meth:`fill` it (even when sending its descriptor failed)."""
        need = where.size
        count = len(self._slots)
        for attempt in range(count):
            index = (self._next + attempt) % count
            segment = self._slots[index]
            if segment is not None:
                try:
                    fcntl.flock(segment.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:          # a reader still holds views of this slot
                    continue
                if segment.capacity < need:      # readers keep their mapping of the old one
                    segment.close()
                    segment = self._slots[index] = None
            if segment is None:
                segment = _Segment(self._dir, -(-need // GRANULE) * GRANULE or GRANULE)
                self._slots[index] = segment
                fcntl.flock(segment.fd, fcntl.LOCK_EX)
            odd = segment.sequence + (1 if segment.sequence % 2 == 0 else 2)   # odd after a failed fill too
            segment.set_sequence(odd)                                # odd: being written
            self._next = index + 1
            return Claim(segment, Written(segment.name, segment.sequence + 1, where))
        return None

    @staticmethod
    def views(claim: Claim) -> list[np.ndarray[Any, Any]]:
        """Writable views of a claimed slot, in layout order: a producer that writes its frame here
        (ONNX Runtime's outputs bound to them) leaves :meth:`fill` nothing to copy."""
        return claim.slot.views_for(claim.written.layout)

    def fill(self, claim: Claim, arrays: Sequence[tuple[str, np.ndarray[Any, Any]]] | None) -> None:
        """Copy the claimed frame in (None: it was written into :meth:`views`), then mark the slot
        complete and let readers at it."""
        segment = claim.slot
        try:
            if arrays is not None:
                for (_, arr), dst in zip(arrays, self.views(claim), strict=True):
                    np.copyto(dst, arr)
            segment.set_sequence(claim.written.sequence)         # even: complete
        finally:
            fcntl.flock(segment.fd, fcntl.LOCK_UN)

    @staticmethod
    def release(claim: Claim) -> None:
        """Give a claimed slot back unwritten (its frame was not published): no descriptor names
        its odd sequence, and the next claim moves past it."""
        fcntl.flock(claim.slot.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._finalizer()


# -- reading -----------------------------------------------------------------------------------

_LEASE_HOLDERS: dict[int, weakref.ref[np.ndarray[Any, Any]]] = {}   # by id (arrays are unhashable)


class _Mapping:
    """A reader's read-only mapping of one segment; its shared lock is held while leases exist."""

    def __init__(self, shm_dir: Path, name: str) -> None:
        if not _NAME.match(name):
            raise SlotUnavailableError(f'segment {name!r} is not an autodice segment name')
        try:
            self.fd = os.open(shm_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SlotOverwrittenError(f'segment {name} is gone (its publisher exited)') from None
        except OSError as exc:
            raise SlotUnavailableError(f'cannot open segment {name}: {exc.strerror}') from exc
        try:
            size = os.fstat(self.fd).st_size
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                 prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            os.close(self.fd)
            raise SlotUnavailableError(f'cannot map segment {name}: {exc}') from exc
        weakref.finalize(self, os.close, self.fd)
        if size < HEADER_SIZE or self.map[:8] != MAGIC:
            raise SlotUnavailableError(f'segment {name} is not an autodice slot')
        self.name = name
        self.data_size = size - HEADER_SIZE
        self._leases = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a lease; False while a writer holds the slot."""
        with self._lock:
            if self._leases == 0:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            self._leases += 1
            return True

    def hold(self, data: np.ndarray[Any, Any]) -> None:
        """Release one lease once ``data`` and every view of it are gone. A bare weak reference,
        kept in a module-level dict so it outlives this mapping's other owners (like
        ``weakref.finalize``'s registry, at a fraction of its cost on a cold frame path)."""
        holder = weakref.ref(data, self._dropped)
        _LEASE_HOLDERS[id(holder)] = holder

    def _dropped(self, holder: weakref.ref[np.ndarray[Any, Any]]) -> None:
        _LEASE_HOLDERS.pop(id(holder), None)
        self.release()

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            if self._leases == 0:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def sequence(self) -> int:
        return int(_SEQUENCE.unpack_from(self.map, _SEQUENCE_AT)[0])


class SlotReader:
    """Maps publishers' slots (cached by segment name) and leases their data to readers."""

    def __init__(self, shm_dir: Path = SHM_DIR, cache_size: int = 64) -> None:
        self._dir = shm_dir
        self._cache: OrderedDict[str, _Mapping] = OrderedDict()
        self._cache_size = cache_size

    def _mapping(self, name: str) -> _Mapping:
        mapping = self._cache.get(name)
        if mapping is None:
            # a new segment: let go of unlinked ones (outgrown, or their publisher is gone)
            for old in [n for n, m in self._cache.items() if os.fstat(m.fd).st_nlink == 0]:
                del self._cache[old]
            mapping = _Mapping(self._dir, name)
            self._cache[name] = mapping
            while len(self._cache) > self._cache_size:   # leased ones stay mapped until released
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(name)
        return mapping

    def lease(self, segment: str, sequence: int, wait: float = WRITE_WAIT) -> np.ndarray[Any, Any]:
        """The slot's data area as a read-only uint8 array; the slot stays leased while it (or any
        view of it) is alive. A writer still copying this frame is waited for, up to ``wait``
        seconds. Raises :class:`SlotOverwrittenError` or :class:`SlotUnavailableError`."""
        mapping = self._mapping(segment)
        self._acquire(mapping, sequence, wait)
        found = mapping.sequence()
        if found != sequence:
            mapping.release()
            raise SlotOverwrittenError(f'segment {segment}: sequence {found}, the descriptor has {sequence}')
        data = np.frombuffer(mapping.map, np.uint8, mapping.data_size, HEADER_SIZE)
        mapping.hold(data)
        return data

    @staticmethod
    def _acquire(mapping: _Mapping, sequence: int, wait: float) -> None:
        if mapping.acquire():
            return
        start, pause = time.monotonic(), _POLL_FIRST
        while True:
            found = mapping.sequence()
            if found not in (sequence - 1, sequence):    # (the writer may be unlocking this frame)
                raise SlotOverwrittenError(f'segment {mapping.name} is being rewritten (sequence '
                                           f'{found}, the descriptor has {sequence})')
            waited = time.monotonic() - start
            if waited >= wait:
                raise SlotOverwrittenError(f'segment {mapping.name}: its writer did not finish '
                                           f'the frame within {wait:g} s')
            if waited < _SPIN:
                os.sched_yield()
            else:
                time.sleep(pause)
                pause = min(2 * pause, _POLL_MAX)
            if mapping.acquire():
                return

    def forget_dead(self) -> None:
        """Drop mappings of segments whose owner died (the memory is freed once unleased)."""
        for name in [n for n in self._cache if segment_owner_alive(n) is False]:
            del self._cache[name]

    def close(self) -> None:
        self._cache.clear()


# -- the in-process bus ------------------------------------------------------------------------

class LocalBus:
    """Publishers and subscribers of one process, by resolved topic: frames pass as references.

    Subscribers are told (``on_change``) when a local publisher of their topic appears or goes,
    so they can stop (or resume) listening over DDS for it.
    """

    def __init__(self) -> None:
        self._publishers: dict[str, weakref.WeakSet[Any]] = {}
        self._subscribers: dict[str, weakref.WeakSet[Any]] = {}
        self._lock = threading.Lock()

    def add_publisher(self, topic: str, publisher: Any) -> None:
        with self._lock:
            self._publishers.setdefault(topic, weakref.WeakSet()).add(publisher)
            subscribers = list(self._subscribers.get(topic, ()))
        for subscriber in subscribers:
            subscriber.local_publishers_changed(True)

    def remove_publisher(self, topic: str, publisher: Any) -> None:
        with self._lock:
            publishers = self._publishers.get(topic)
            if publishers is None or publisher not in publishers:
                return
            publishers.discard(publisher)
            remaining = bool(publishers)
            subscribers = list(self._subscribers.get(topic, ()))
        if not remaining:
            for subscriber in subscribers:
                subscriber.local_publishers_changed(False)

    def add_subscriber(self, topic: str, subscriber: Any) -> bool:
        """Register; True when a live local publisher of the topic exists already."""
        with self._lock:
            self._subscribers.setdefault(topic, weakref.WeakSet()).add(subscriber)
            publishers = list(self._publishers.get(topic, ()))
        return any(p.alive() for p in publishers)

    def remove_subscriber(self, topic: str, subscriber: Any) -> None:
        with self._lock:
            self._subscribers.get(topic, weakref.WeakSet()).discard(subscriber)

    def subscribers(self, topic: str) -> list[Any]:
        with self._lock:
            return list(self._subscribers.get(topic, ()))


LOCAL_BUS = LocalBus()


def side_topics(topic: str) -> tuple[str, str]:
    """The descriptor topic and the in-process presence topic next to a TensorList topic.

    Both are hidden names (a token starting with '_'): ``ros2 topic list`` and ``ros2 bag record
    -a`` leave them out unless asked to include hidden topics.
    """
    base = topic.rstrip('/')
    return f'{base}/_shm', f'{base}/_local'


def subscriber_count(count_subscribers: Callable[[str], int], topic: str) -> int:
    """Subscribers of a tensor topic on any path (payload, shared memory, in-process)."""
    return count_subscribers(topic) + sum(count_subscribers(t) for t in side_topics(topic))

"""numpy <-> ``autodice_msgs/Tensor`` and ``TensorList``, and the transport every node uses.

Encoding copies the payload once (straight into the message's ``array('B')``); decoding copies
nothing (``np.frombuffer`` over the received buffer). Every received tensor is validated before
anything is allocated for it: dtype code, rank, ``prod(shape) * itemsize == len(data)`` and,
where the receiver knows what to expect (from the manifest), the name, dtype and shape. Any
violation raises :class:`~autodice_ros.errors.TensorError` naming the tensor and the field.

The transport part (:class:`TensorPublisher`, :class:`TensorSubscriber`) is the one place nodes
publish and receive tensors through; a faster same-board path slots in behind it.
"""
from __future__ import annotations

import array
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from autodice_ros import fastpath
from autodice_ros.errors import FrameDroppedError, StaleFrameError, TensorError, UndecodableError
from autodice_ros.refwire import ListReader, RefReader, RefWire, list_cdr
from autodice_ros.rosutil import subscribe_decoding

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

# dtype name <-> the constants of autodice_msgs/msg/Tensor.msg (kept in step by a unit test).
DTYPE_CODES: dict[str, int] = {
    'float32': 1, 'float16': 2, 'float64': 3, 'int8': 4, 'uint8': 5,
    'int16': 6, 'int32': 7, 'int64': 8, 'bool': 9,
}
CODE_DTYPES: dict[int, np.dtype[Any]] = {
    code: np.dtype(name).newbyteorder('<') for name, code in DTYPE_CODES.items()
}
MAX_RANK = 16
_LITTLE_ENDIAN_HOST = np.little_endian

FrameKey = tuple[int, int, int]   # (stamp.sec, stamp.nanosec, frame): identifies one camera frame


class TensorSpec(Protocol):
    """What a receiver expects of a tensor (``manifest.TensorEntry`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


# -- single tensors ----------------------------------------------------------------------------

def dtype_code(dtype: np.dtype[Any] | str) -> int:
    name = np.dtype(dtype).name
    try:
        return DTYPE_CODES[name]
    except KeyError:
        raise TensorError(f'dtype {name} has no Tensor code (supported: {", ".join(DTYPE_CODES)})') from None


def _wire_array(name: str, value: np.ndarray[Any, Any] | Any) -> tuple[int, np.ndarray[Any, Any]]:
    """``value`` as a Tensor carries it: its dtype code and a C-ordered little-endian array (the
    same array when it is one already)."""
    arr = np.asarray(value)
    code = dtype_code(arr.dtype)
    if arr.ndim > MAX_RANK:
        raise TensorError(f'tensor {name!r}: rank {arr.ndim} exceeds {MAX_RANK}')
    return code, np.require(arr, arr.dtype.newbyteorder('<'), 'C')


def encode_tensor(name: str, value: np.ndarray[Any, Any] | Any) -> Any:
    """A ``Tensor`` message holding ``value`` little-endian in C order."""
    from autodice_msgs.msg import Tensor

    code, arr = _wire_array(name, value)
    payload = array.array('B')
    payload.frombytes(arr.reshape(-1).view(np.uint8).data)
    msg = Tensor(check_fields=False)
    msg.name = name
    msg.dtype = code
    msg.shape = array.array('I', arr.shape)
    msg.data = payload
    return msg


def check_tensor(label: str, name: str, code: int, dims: Sequence[int], nbytes: int | None,
                 expect: TensorSpec | None) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """Validate one tensor's metadata (and byte count, when known); returns its dtype and shape."""
    dtype = CODE_DTYPES.get(code)
    if dtype is None:
        raise TensorError(f'{label}: field dtype: unknown code {code}')
    shape = tuple(int(d) for d in dims)
    if len(shape) > MAX_RANK:
        raise TensorError(f'{label}: field shape: rank {len(shape)} exceeds {MAX_RANK}')
    expected_bytes = math.prod(shape) * dtype.itemsize
    if nbytes is not None and expected_bytes != nbytes:
        raise TensorError(f'{label}: field data: {nbytes} bytes, but shape {list(shape)} '
                          f'of {dtype.name} needs {expected_bytes}')
    if expect is not None:
        if name != expect.name:
            raise TensorError(f'{label}: field name: expected {expect.name!r}')
        if dtype.name != np.dtype(expect.dtype).name:
            raise TensorError(f'{label}: field dtype: {dtype.name}, expected {expect.dtype}')
        if shape != tuple(expect.shape):
            raise TensorError(f'{label}: field shape: {list(shape)}, expected {list(expect.shape)}')
    return dtype, shape


def _native(view: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return view if _LITTLE_ENDIAN_HOST else view.astype(view.dtype.newbyteorder('='))


def decode_tensor(msg: Any, expect: TensorSpec | None = None,
                  where: str = '') -> np.ndarray[Any, Any]:
    """A read-only view of ``msg.data``; raises :class:`TensorError` naming the bad field."""
    label = f'{where}tensor {msg.name!r}'
    dtype, shape = check_tensor(label, msg.name, msg.dtype, msg.shape, len(msg.data), expect)
    view = np.frombuffer(msg.data, dtype=dtype, count=math.prod(shape)).reshape(shape)
    if not view.flags.aligned:        # (CDR aligns byte arrays to 4: an 8-byte dtype may not be)
        view = view.copy()
        view.flags.writeable = False
    return _native(view)


# -- one frame's tensors -----------------------------------------------------------------------

@dataclass
class Frame:
    """The tensors of one camera frame on one link, with the image's header."""

    header: Any                          # std_msgs/Header of the camera image, unchanged
    frame: int
    tensors: dict[str, np.ndarray[Any, Any]]

    @property
    def key(self) -> FrameKey:
        return frame_key(self.header, self.frame)


def frame_key(header: Any, frame: int) -> FrameKey:
    return (int(header.stamp.sec), int(header.stamp.nanosec), int(frame))


def encode_list_cdr(header: Any, frame: int, tensors: Mapping[str, Any]) -> bytes | None:
    """The serialized ``TensorList`` (what :func:`encode_list` and rclpy would send), written with
    one copy of each tensor; None where rclpy should serialize (an unusual header or name).
    rclpy's own path copies a 3.2 MB payload three times (2.4 ms here)."""
    items = []
    for name, value in tensors.items():
        code, arr = _wire_array(name, value)
        items.append((name, code, arr.shape, arr.reshape(-1).view(np.uint8).data))
    return list_cdr(header, int(frame), items)


def encode_list(header: Any, frame: int, tensors: Mapping[str, Any]) -> Any:
    """A ``TensorList`` for one frame: ``header`` is the camera image's, carried unchanged."""
    from autodice_msgs.msg import TensorList

    msg = TensorList()
    msg.header = header
    msg.frame = int(frame)
    msg.tensors = [encode_tensor(name, value) for name, value in tensors.items()]
    return msg


def _select(items: Sequence[Any], expect: Sequence[TensorSpec] | None,
            where: str) -> list[tuple[Any, TensorSpec | None]]:
    """Pair each item (anything with ``.name``) with its expectation; with ``expect``, exactly
    those (others are skipped), each present once."""
    by_name: dict[str, Any] = {}
    for item in items:
        if item.name in by_name:
            raise TensorError(f'{where}tensor {item.name!r}: field name: appears twice in one TensorList')
        by_name[item.name] = item
    if expect is None:
        return [(item, None) for item in by_name.values()]
    missing = [spec.name for spec in expect if spec.name not in by_name]
    if missing:
        raise TensorError(f'{where}tensor {missing[0]!r}: missing from the TensorList '
                          f'(it holds: {", ".join(by_name) or "nothing"})')
    return [(by_name[spec.name], spec) for spec in expect]


def decode_list(msg: Any, expect: Sequence[TensorSpec] | None = None, where: str = '') -> Frame:
    """Decode a ``TensorList``; with ``expect``, exactly those tensors (others on the topic are skipped).

    Each expected tensor must appear once; all are validated before any is returned.
    """
    arrays = {t.name: decode_tensor(t, spec, where) for t, spec in _select(msg.tensors, expect, where)}
    return Frame(msg.header, int(msg.frame), arrays)


class RefSlice(NamedTuple):
    """Where one tensor of a descriptor lies in its slot, validated (see :func:`ref_layout`)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int
    nbytes: int


def ref_layout(tensors: Sequence[Any], expect: Sequence[TensorSpec] | None = None,
               where: str = '') -> tuple[RefSlice, ...]:
    """A descriptor's tensors (``TensorRef`` fields), validated like :func:`decode_list`. The same
    for every frame of a stream: subscribers keep it while the descriptor's tensors do not change."""
    slices = []
    for ref, spec in _select(tensors, expect, where):
        label = f'{where}tensor {ref.name!r}'
        dtype, shape = check_tensor(label, ref.name, ref.dtype, ref.shape, None, spec)
        start, nbytes = int(ref.offset), math.prod(shape) * dtype.itemsize
        if start % dtype.itemsize:
            raise TensorError(f'{label}: field offset: {start} is not a multiple of the '
                              f'{dtype.itemsize}-byte {dtype.name} (misaligned)')
        slices.append(RefSlice(ref.name, dtype, shape, start, nbytes))
    return tuple(slices)


def decode_ref(msg: Any, data: np.ndarray[Any, Any], expect: Sequence[TensorSpec] | None = None,
               where: str = '', layout: Sequence[RefSlice] | None = None) -> Frame:
    """A ``TensorListRef``'s tensors as views of ``data`` (a leased slot), validated like
    :func:`decode_list`, plus: every tensor lies inside the slot. ``layout``: the message's
    :func:`ref_layout`, when the caller keeps it."""
    arrays = {}
    for place in layout if layout is not None else ref_layout(msg.tensors, expect, where):
        end = place.start + place.nbytes
        if end > data.size:
            raise TensorError(f'{where}tensor {place.name!r}: field offset: {place.nbytes} bytes at '
                              f'{place.start} do not fit the {data.size}-byte slot {msg.segment}')
        arrays[place.name] = _native(data[place.start:end].view(place.dtype).reshape(place.shape))
    return Frame(msg.header, int(msg.frame), arrays)


@dataclass(frozen=True)
class _Named:
    name: str
    value: np.ndarray[Any, Any]


def select_arrays(tensors: Mapping[str, np.ndarray[Any, Any]], expect: Sequence[TensorSpec] | None = None,
                  where: str = '') -> dict[str, np.ndarray[Any, Any]]:
    """In-process arrays checked like :func:`decode_list` checks a message (no copy)."""
    items = [_Named(name, value) for name, value in tensors.items()]
    out = {}
    for item, spec in _select(items, expect, where):
        check_tensor(f'{where}tensor {item.name!r}', item.name, dtype_code(item.value.dtype),
                     item.value.shape, None, spec)
        out[item.name] = item.value
    return out


# -- transport: the one way nodes send and receive tensors --------------------------------------

def qos_profile(reliability: str = 'reliable', depth: int = 10, durability: str = 'volatile',
                lifespan: float = 0.0) -> QoSProfile:
    """A QoS profile from the parameter strings nodes declare ('reliable'|'best_effort', ...).

    ``lifespan`` (seconds, 0 = forever) is DDS Lifespan: a frame not delivered within it (a link
    outage, a backlog) is dropped by the middleware instead of arriving late.
    """
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}
    dur = {'volatile': DurabilityPolicy.VOLATILE, 'transient_local': DurabilityPolicy.TRANSIENT_LOCAL}
    if reliability not in rel:
        raise ValueError(f'qos reliability {reliability!r}: expected one of {sorted(rel)}')
    if durability not in dur:
        raise ValueError(f'qos durability {durability!r}: expected one of {sorted(dur)}')
    if depth < 1:
        raise ValueError(f'qos depth {depth}: must be at least 1')
    if lifespan < 0:
        raise ValueError(f'qos lifespan {lifespan}: must be 0 (forever) or positive seconds')
    profile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                         reliability=rel[reliability], durability=dur[durability])
    if lifespan > 0:
        profile.lifespan = Duration(nanoseconds=int(lifespan * 1e9))
    return profile


FAST_PATH_PARAM = 'fast_path'
SLOTS_PARAM = 'fast_path_slots'


def fast_path_settings(node: Node, depth: int) -> tuple[bool, int]:
    """The node's fast-path parameters (declared on first use, read-only): on/off and ring size."""
    from autodice_ros.nodes.common import declare

    def get(name: str, default: Any, description: str) -> Any:
        if node.has_parameter(name):
            return node.get_parameter(name).value
        return declare(node, name, default, description)

    enabled = get(FAST_PATH_PARAM, True,
                  'same-host tensors through shared memory (a descriptor over DDS) and in-process '
                  'hand-off; false: every tensor as a TensorList over DDS')
    slots = get(SLOTS_PARAM, 0, 'shared-memory slots per published topic (0: QoS depth + 2, so a '
                'reader lagging a full queue behind still finds its frames)')
    return bool(enabled) and fastpath.available(), int(slots) or depth + 2


def _read_only(value: Any) -> np.ndarray[Any, Any]:
    view = np.asarray(value).view()
    dtype_code(view.dtype)
    view.flags.writeable = False
    return view


class TensorPublisher:
    """Publishes one frame's tensors on a topic, on each path that has readers; counts failures.

    In-process subscribers get the arrays themselves (no copy; publishers must not modify an array
    after publishing it). Subscribers on this host get a ``TensorListRef`` on ``<topic>/_shm``
    naming a shared-memory slot the frame was copied into (one copy). Everyone else -- another
    board, ``ros2 topic echo``, a bag recorder, a node with the fast path off -- subscribes to
    ``<topic>`` and gets the ordinary ``TensorList``. With the node parameter ``fast_path`` false
    (or ``fast_path=False`` here) only that last path exists.
    """

    def __init__(self, node: Node, topic: str, qos: QoSProfile, fast_path: bool | None = None) -> None:
        """``fast_path=False`` turns the fast path off for this publisher; otherwise the node's
        ``fast_path`` parameter decides (and /dev/shm must exist)."""
        from autodice_msgs.msg import TensorList, TensorListRef

        self.topic = topic
        self.failures = 0
        self.sent: Counter[str] = Counter()   # frames by path: 'payload', 'shm', 'local'; 'nobody' matched
        self.in_place = 0                     # 'shm' frames written into a borrowed slot: no copy
        self._node = node
        self._resolved = node.resolve_topic_name(topic)
        enabled, slots = fast_path_settings(node, qos.depth)
        self._fast = enabled if fast_path is None else fast_path and enabled
        self._ring: fastpath.SlotRing | None = None
        self._refs: Any = None
        self._ref_key: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
        self._layout: fastpath.Layout | None = None
        self._ref_msg: Any = None
        self._wire: RefWire | None = None
        self._loan: fastpath.Claim | None = None     # a slot lent out by borrow()
        if self._fast:
            fastpath.reap()
            # the descriptor topic first: subscribers take a payload-only topic for a plain publisher
            self._refs = node.create_publisher(TensorListRef, fastpath.side_topics(self._resolved)[0], qos)
            self._ring = fastpath.SlotRing(slots)
        self._publisher = node.create_publisher(TensorList, self._resolved, qos)
        if self._fast:
            fastpath.LOCAL_BUS.add_publisher(self._resolved, self)

    @property
    def resolved_topic(self) -> str:
        return self._resolved

    def alive(self) -> bool:
        """False once its node is destroyed (whether or not :meth:`destroy` was called)."""
        from rclpy._rclpy_pybind11 import InvalidHandle

        try:
            self._publisher.get_subscription_count()
        except InvalidHandle:
            return False
        return True

    def get_subscription_count(self) -> int:
        """Subscribers on every path (payload, shared memory, in-process)."""
        count = int(self._publisher.get_subscription_count())
        if self._refs is not None:
            count += int(self._refs.get_subscription_count())
        if self._fast:
            count += len(fastpath.LOCAL_BUS.subscribers(self._resolved))
        return count

    def publish(self, header: Any, frame: int, tensors: Mapping[str, Any]) -> bool:
        """Send one frame on each path with readers; False (and counted) if any path failed."""
        from rclpy._rclpy_pybind11 import InvalidHandle

        ok = True
        sent_before = self.sent.total()
        if self._fast:
            local = fastpath.LOCAL_BUS.subscribers(self._resolved)
            if local:
                lent = self._loan is not None    # a slot's views would change under them: copies
                shared = Frame(header, int(frame), {k: _read_only(np.array(v) if lent else v)
                                                    for k, v in tensors.items()})
                for subscriber in local:
                    try:
                        subscriber.deliver_local(shared)
                    except InvalidHandle:      # its node was destroyed without destroy()
                        fastpath.LOCAL_BUS.remove_subscriber(self._resolved, subscriber)
                self.sent['local'] += 1
        if self._refs is not None and self._refs.get_subscription_count() > 0:   # before the slow path
            ok = self._publish_ref(header, frame, tensors) and ok
        if self._publisher.get_subscription_count() > 0:
            raw = encode_list_cdr(header, frame, tensors)
            msg = raw if raw is not None else encode_list(header, frame, tensors)
            ok = self._send(self._publisher, msg, 'payload') and ok
        if not self.sent.total() - sent_before:
            self.sent['nobody'] += 1      # no reader matched on any path (DDS would drop it too)
        self.give_back()                  # borrowed, but its reader left before publish
        return ok

    def _send(self, publisher: Any, msg: Any, path: str) -> bool:
        from rclpy._rclpy_pybind11 import RCLError

        try:
            publisher.publish(msg)
        except RCLError:   # reliable floods can fail a publish: count it, keep going
            self.failures += 1
            return False
        self.sent[path] += 1
        return True

    def borrow(self) -> dict[str, np.ndarray[Any, Any]] | None:
        """Writable arrays, laid out like the last frame sent by shared memory, inside the slot
        the next frame goes to.

        A producer that writes its frame there (a stage binds ONNX Runtime's outputs to them) and
        passes them to :meth:`publish` saves the fast path its copy. None when there is nothing to
        save: no frame sent that way yet, no reader on this host, readers in this process (they
        must never see a slot reused), or no free slot. Call :meth:`give_back` if the frame is not
        published after all.
        """
        if (self._layout is None or self._ring is None or self._refs is None
                or self._refs.get_subscription_count() == 0
                or fastpath.LOCAL_BUS.subscribers(self._resolved)):
            return None
        self.give_back()
        try:
            claim = self._ring.claim(self._layout)
        except OSError:            # publish() finds out again, says so and goes on without it
            return None
        if claim is None:
            return None
        self._loan = claim
        names = (place.name for place in self._layout.placements)
        return dict(zip(names, self._ring.views(claim), strict=True))

    def give_back(self) -> None:
        """Return a borrowed slot unpublished (its producer failed); a no-op without a loan."""
        loan, self._loan = self._loan, None
        if loan is not None and self._ring is not None:
            self._ring.release(loan)

    def _is_loan(self, arrays: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> bool:
        return (self._loan is not None and self._ring is not None
                and len(arrays) == len(views := self._ring.views(self._loan))
                and all(arr is view for (_, arr), view in zip(arrays, views, strict=True)))

    def _publish_ref(self, header: Any, frame: int, tensors: Mapping[str, Any]) -> bool:
        assert self._ring is not None
        arrays = [(name, np.asarray(value)) for name, value in tensors.items()]
        written_in_place = self._is_loan(arrays)
        if written_in_place:
            claim, self._loan = self._loan, None
            self.in_place += 1
        else:
            self.give_back()
            key = [(name, arr.dtype, arr.shape) for name, arr in arrays]
            if key != self._ref_key:        # a new set of tensors: lay it out and describe it, once
                self._describe(arrays)
                self._ref_key = key
            assert self._layout is not None
            try:
                claim = self._ring.claim(self._layout)
            except OSError as exc:     # /dev/shm full or gone: this publisher carries on without it
                self._node.get_logger().error(f'topic {self._resolved!r}: shared memory failed '
                                              f'({exc}); publishing every frame as a TensorList '
                                              'from now on')
                self._stop_fast_path()
                self.failures += 1
                return False
        if claim is None:          # every slot is still held by a reader
            self.failures += 1
            return False
        written = claim.written
        msg = None if self._wire is None else self._wire.encode(header, int(frame), written.segment,
                                                                 written.sequence)
        if msg is None:            # (no wire writer, or an unusual header: rclpy serializes it)
            msg = self._ref_msg
            msg.header = header
            msg.frame = int(frame)
            msg.segment = written.segment
            msg.sequence = written.sequence
        try:                       # the descriptor first: the copy runs while it travels
            return self._send(self._refs, msg, 'shm')
        finally:
            self._ring.fill(claim, None if written_in_place else arrays)

    def _describe(self, arrays: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> None:
        """The layout of these tensors in a slot and the descriptor message naming them."""
        from autodice_msgs.msg import TensorListRef, TensorRef

        for name, arr in arrays:
            dtype_code(arr.dtype)
            if arr.ndim > MAX_RANK:
                raise TensorError(f'tensor {name!r}: rank {arr.ndim} exceeds {MAX_RANK}')
        self._layout = fastpath.layout(arrays)
        refs = []
        for place in self._layout.placements:
            ref = TensorRef()
            ref.name = place.name
            ref.dtype = DTYPE_CODES[place.dtype.name]
            ref.shape = array.array('I', place.shape)
            ref.offset = place.offset
            refs.append(ref)
        self._ref_msg = TensorListRef()
        self._ref_msg.host = fastpath.host_identity()
        self._ref_msg.tensors = refs
        try:
            self._wire = RefWire(self._ref_msg.host, refs)
        except ValueError:
            self._wire = None

    def _stop_fast_path(self) -> None:
        self.give_back()
        if self._refs is not None:
            self._node.destroy_publisher(self._refs)
            self._refs = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def destroy(self, node: Node) -> None:
        if self._fast:
            fastpath.LOCAL_BUS.remove_publisher(self._resolved, self)
        self._stop_fast_path()
        node.destroy_publisher(self._publisher)


class TensorSubscriber:
    """Receives a topic's frames on whichever path reaches this process; hands on validated
    :class:`Frame` objects.

    Paths, chosen without the caller's help: from a publisher in this process, its arrays
    (``<topic>/_local`` announces this subscriber in the ROS graph); from publishers on this host,
    descriptors on ``<topic>/_shm`` and the tensors as views of leased shared-memory slots; and
    the ordinary ``TensorList`` on ``<topic>`` once a descriptor comes from another host, a slot
    cannot be mapped, a publisher of the topic offers no fast path, or the fast path is off here.

    A message that fails validation, or a frame whose slot was rewritten before it could be read,
    goes to ``on_error`` (log it, count it) and is dropped; the callback never sees it. The arrays
    of a shared-memory frame are read-only and keep their slot leased (the publisher skips it)
    while they are alive.
    """

    GRAPH_PERIOD = 0.5     # seconds between checks for publishers without a fast path

    def __init__(self, node: Node, topic: str, qos: QoSProfile,
                 expect: Sequence[TensorSpec] | None,
                 on_frame: Callable[[str, Frame], None],
                 on_error: Callable[[str, TensorError], None], fast_path: bool | None = None,
                 payload_first: bool = False) -> None:
        """``payload_first``: the publisher is probably on another machine (the plan knows the
        boards): take the TensorList topic from the start as well, so its first frames are not
        lost while its first descriptor shows where it runs. The first descriptor decides: from
        this host (its slot readable) the TensorList topic goes; else the descriptor topic goes."""
        self.topic = topic
        self.received: Counter[str] = Counter()   # frames delivered, by path
        self.drops: Counter[str] = Counter()      # frames announced but not delivered, by reason
        self._node = node
        self._qos = qos
        self._expect = list(expect) if expect is not None else None
        self._on_frame = on_frame
        self._on_error = on_error
        self._where = f'topic {topic!r}: '
        self._max_age_ns = int(qos.lifespan.nanoseconds) if qos.lifespan.nanoseconds > 0 else 0
        self._resolved = node.resolve_topic_name(topic)
        self._shm_topic, self._local_topic = fastpath.side_topics(self._resolved)
        self._payload_sub: Any = None
        self._ref_sub: Any = None
        self._local_sub: Any = None
        self._plain_seen = 0
        self._shm_publishers = 0
        self._payload_at_switch = 0
        self._overlap_ticks = 0
        self._recent: OrderedDict[FrameKey, str] = OrderedDict()
        self._queue: deque[Frame] = deque()
        enabled, _ = fast_path_settings(node, qos.depth)
        self._fast = enabled if fast_path is None else fast_path and enabled
        self._reader = fastpath.SlotReader() if self._fast else None
        self._ref_reader = RefReader()
        self._list_reader = ListReader()
        self._ref_tensors: Any = None
        self._ref_layout: tuple[RefSlice, ...] = ()
        self._guard: Any = None
        self._timer: Any = None
        self._undecided = False        # payload_first: both topics until the first descriptor
        if not self._fast:
            self._subscribe_payload()
            return
        fastpath.reap()
        self._timer = node.create_timer(self.GRAPH_PERIOD, self._check_graph)
        if fastpath.LOCAL_BUS.add_subscriber(self._resolved, self):
            self.local_publishers_changed(True)
        else:
            self._subscribe_refs()
            if payload_first:
                self._undecided = True
                self._subscribe_payload()

    @property
    def path(self) -> str:
        """What this subscriber listens to now: 'local', 'shm', 'payload' or 'shm+payload'."""
        if self._local_sub is not None:
            return 'local'
        return '+'.join(p for p, sub in (('shm', self._ref_sub), ('payload', self._payload_sub)) if sub)

    def get_publisher_count(self) -> int:
        """Publishers matched on the paths this subscriber listens to now (a publisher in this
        process counts once)."""
        if self._local_sub is not None:
            return 1
        subscriptions = (self._ref_sub, self._payload_sub)
        return sum(int(sub.get_publisher_count()) for sub in subscriptions if sub is not None)

    # -- subscriptions --------------------------------------------------------------------------

    def _subscribe_payload(self) -> None:
        from autodice_msgs.msg import TensorList

        if self._payload_sub is None:
            self._payload_sub = subscribe_decoding(self._node, TensorList, self._resolved,
                                                   self._receive_payload, self._qos, self._undecodable,
                                                   self._list_reader.decode)

    def _subscribe_refs(self) -> None:
        from autodice_msgs.msg import TensorListRef

        if self._ref_sub is None:
            self._ref_sub = subscribe_decoding(self._node, TensorListRef, self._shm_topic, self._receive_ref,
                                               self._qos, self._undecodable, self._ref_reader.decode)

    def _unsubscribe(self, *names: str) -> None:
        for name in names:
            sub = getattr(self, name)
            if sub is not None:
                self._node.destroy_subscription(sub)
                setattr(self, name, None)

    def local_publishers_changed(self, present: bool) -> None:
        """The local bus: a publisher of this topic appeared in (or the last one left) this process."""
        from autodice_msgs.msg import TensorListRef

        if present:
            self._unsubscribe('_payload_sub', '_ref_sub')
            if self._guard is None:
                self._guard = self._node.create_guard_condition(self._drain_local)
            if self._local_sub is None:    # never published on: it only shows this reader in the graph
                self._local_sub = self._node.create_subscription(TensorListRef, self._local_topic,
                                                                 lambda _msg: None, self._qos)
        else:
            self._unsubscribe('_local_sub')
            self._subscribe_refs()

    def _fall_back(self, reason: str) -> None:
        """Take the TensorList topic from now on (the descriptor topic goes once it is matched)."""
        if self._payload_sub is None:
            self._node.get_logger().info(f'{self._where}receiving TensorList messages: {reason}')
            self._payload_at_switch = self.received['payload']
            self._overlap_ticks = 0
            self._subscribe_payload()

    def _check_graph(self) -> None:
        node = self._node
        if self._local_sub is not None:
            return
        if self._ref_sub is not None:
            publishers = self._ref_sub.get_publisher_count()
            if publishers < self._shm_publishers:      # one left, maybe killed: its slots must go
                fastpath.reap()
                assert self._reader is not None
                self._reader.forget_dead()
            self._shm_publishers = publishers
        if self._payload_sub is None:
            plain = node.count_publishers(self._resolved) - node.count_publishers(self._shm_topic)
            self._plain_seen = self._plain_seen + 1 if plain > 0 else 0
            if self._plain_seen >= 2:      # twice: a fast publisher announces its two topics one by one
                self._fall_back('a publisher of the topic has no shared-memory path')
        elif self._ref_sub is not None:
            if self._undecided and self._shm_publishers > 0:
                return                     # a fast publisher: its first descriptor decides
            # the descriptor topic goes once TensorLists flow from every publisher, plus one period
            # (a publisher may see our TensorList subscription later than we see it)
            flowing = (self.received['payload'] > self._payload_at_switch
                       and self._payload_sub.get_publisher_count() >= node.count_publishers(self._resolved))
            self._overlap_ticks = self._overlap_ticks + 1 if flowing else 0
            if self._overlap_ticks >= 2:
                self._unsubscribe('_ref_sub')

    # -- receiving ------------------------------------------------------------------------------

    def _undecodable(self, exc: Exception) -> None:
        error = UndecodableError(f'{self._where}a message that does not deserialize: {exc}')
        self._on_error(self.topic, error)

    def _stale(self, msg: Any, source_ns: int) -> bool:
        """DDS Lifespan, checked on arrival: the middleware only drops expired frames still in the
        publisher's history, not those a link outage left in flight (or in a socket buffer)."""
        if not self._max_age_ns or not source_ns:
            return False
        age_ns = time.time_ns() - source_ns
        if age_ns <= self._max_age_ns:
            return False
        self._on_error(self.topic, StaleFrameError(
            f'{self._where}frame {msg.frame} dropped: published {age_ns / 1e9:.2f} s ago, '
            f'beyond the QoS lifespan of {self._max_age_ns / 1e9:.2f} s'))
        return True

    def _receive_payload(self, msg: Any, source_ns: int = 0) -> None:
        if self._stale(msg, source_ns):
            return
        try:
            frame = decode_list(msg, self._expect, where=self._where)
        except TensorError as exc:
            self._on_error(self.topic, exc)
            return
        self._deliver('payload', frame)

    def _receive_ref(self, msg: Any, source_ns: int = 0) -> None:
        assert self._reader is not None
        if self._stale(msg, source_ns):
            return
        if msg.host != fastpath.host_identity():
            self._undecided = False
            self._fall_back(f'a publisher is on another host ({msg.host})')
            return
        try:
            data = self._reader.lease(msg.segment, msg.sequence)
        except fastpath.SlotUnavailableError as exc:
            self._fall_back(str(exc))
            return
        except fastpath.SlotOverwrittenError as exc:
            self.drops['overwritten'] += 1
            self._on_error(self.topic, FrameDroppedError(
                f'{self._where}frame {msg.frame} dropped: its shared-memory slot was rewritten '
                f'before it was read ({exc})'))
            return
        try:
            if msg.tensors is not self._ref_tensors:      # (RefReader keeps one tuple per stream)
                self._ref_layout = ref_layout(msg.tensors, self._expect, self._where)
                self._ref_tensors = msg.tensors
            frame = decode_ref(msg, data, where=self._where, layout=self._ref_layout)
        except TensorError as exc:
            self._on_error(self.topic, exc)
            return
        self._deliver('shm', frame)
        if self._undecided:            # the publisher is on this host after all: shared memory
            self._undecided = False
            self._node.get_logger().info(f'{self._where}its publisher is on this host: shared memory '
                                         'from now on, not TensorList messages')
            self._unsubscribe('_payload_sub')

    def deliver_local(self, frame: Frame) -> None:
        """Called by a publisher of this process (in its thread); the executor delivers it."""
        if self._guard is None or self._local_sub is None:
            return
        if len(self._queue) >= self._qos.depth:     # KEEP_LAST, like the DDS history
            self._queue.popleft()
            self.drops['overflow'] += 1
        self._queue.append(frame)
        self._guard.trigger()

    def _drain_local(self) -> None:
        while self._queue:
            shared = self._queue.popleft()
            try:
                arrays = select_arrays(shared.tensors, self._expect, self._where)
            except TensorError as exc:
                self._on_error(self.topic, exc)
                continue
            self._deliver('local', Frame(shared.header, shared.frame, arrays))

    def _deliver(self, path: str, frame: Frame) -> None:
        if self._payload_sub is not None and self._ref_sub is not None:   # switching: each frame once
            seen = self._recent.get(frame.key)
            if seen is not None and seen != path:
                return
            self._recent[frame.key] = path
            while len(self._recent) > 64:
                self._recent.popitem(last=False)
        self.received[path] += 1
        self._on_frame(self.topic, frame)

    def destroy(self, node: Node) -> None:
        self._unsubscribe('_payload_sub', '_ref_sub', '_local_sub')
        if self._fast:
            fastpath.LOCAL_BUS.remove_subscriber(self._resolved, self)
        if self._timer is not None:
            node.destroy_timer(self._timer)
            self._timer = None
        if self._guard is not None:
            node.destroy_guard_condition(self._guard)
            self._guard = None
        self._queue.clear()
        if self._reader is not None:
            self._reader.close()

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from autodice_ros.errors import TensorError

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


def encode_tensor(name: str, value: np.ndarray[Any, Any] | Any) -> Any:
    """A ``Tensor`` message holding ``value`` little-endian in C order (one payload copy)."""
    from autodice_msgs.msg import Tensor

    arr = np.asarray(value)
    code = dtype_code(arr.dtype)
    if arr.ndim > MAX_RANK:
        raise TensorError(f'tensor {name!r}: rank {arr.ndim} exceeds {MAX_RANK}')
    if arr.dtype.byteorder == '>' or (arr.dtype.byteorder == '=' and not _LITTLE_ENDIAN_HOST):
        arr = arr.astype(arr.dtype.newbyteorder('<'))
    payload = array.array('B')
    if arr.flags.c_contiguous:
        payload.frombytes(arr.reshape(-1).data.cast('B'))
    else:
        payload.frombytes(bytes(arr.nbytes))
        np.frombuffer(payload, dtype=arr.dtype).reshape(arr.shape)[...] = arr
    msg = Tensor(check_fields=False)
    msg.name = name
    msg.dtype = code
    msg.shape = array.array('I', arr.shape)
    msg.data = payload
    return msg


def decode_tensor(msg: Any, expect: TensorSpec | None = None,
                  where: str = '') -> np.ndarray[Any, Any]:
    """A read-only view of ``msg.data``; raises :class:`TensorError` naming the bad field."""
    label = f'{where}tensor {msg.name!r}'
    dtype = CODE_DTYPES.get(msg.dtype)
    if dtype is None:
        raise TensorError(f'{label}: field dtype: unknown code {msg.dtype}')
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) > MAX_RANK:
        raise TensorError(f'{label}: field shape: rank {len(shape)} exceeds {MAX_RANK}')
    expected_bytes = math.prod(shape) * dtype.itemsize
    if expected_bytes != len(msg.data):
        raise TensorError(f'{label}: field data: {len(msg.data)} bytes, but shape {list(shape)} '
                          f'of {dtype.name} needs {expected_bytes}')
    if expect is not None:
        if msg.name != expect.name:
            raise TensorError(f'{label}: field name: expected {expect.name!r}')
        if dtype.name != np.dtype(expect.dtype).name:
            raise TensorError(f'{label}: field dtype: {dtype.name}, expected {expect.dtype}')
        if shape != tuple(expect.shape):
            raise TensorError(f'{label}: field shape: {list(shape)}, expected {list(expect.shape)}')
    view = np.frombuffer(msg.data, dtype=dtype, count=math.prod(shape)).reshape(shape)
    return view if _LITTLE_ENDIAN_HOST else view.astype(dtype.newbyteorder('='))


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


def encode_list(header: Any, frame: int, tensors: Mapping[str, Any]) -> Any:
    """A ``TensorList`` for one frame: ``header`` is the camera image's, carried unchanged."""
    from autodice_msgs.msg import TensorList

    msg = TensorList()
    msg.header = header
    msg.frame = int(frame)
    msg.tensors = [encode_tensor(name, value) for name, value in tensors.items()]
    return msg


def decode_list(msg: Any, expect: Sequence[TensorSpec] | None = None, where: str = '') -> Frame:
    """Decode a ``TensorList``; with ``expect``, exactly those tensors (others on the topic are skipped).

    Each expected tensor must appear once; all are validated before any is returned.
    """
    by_name: dict[str, Any] = {}
    for tensor in msg.tensors:
        if tensor.name in by_name:
            raise TensorError(f'{where}tensor {tensor.name!r}: field name: appears twice in one TensorList')
        by_name[tensor.name] = tensor
    if expect is None:
        arrays = {name: decode_tensor(t, None, where) for name, t in by_name.items()}
    else:
        arrays = {}
        for spec in expect:
            if spec.name not in by_name:
                raise TensorError(f'{where}tensor {spec.name!r}: missing from the TensorList '
                                  f'(it holds: {", ".join(by_name) or "nothing"})')
            arrays[spec.name] = decode_tensor(by_name[spec.name], spec, where)
    return Frame(msg.header, int(msg.frame), arrays)


# -- transport: the one way nodes send and receive tensors --------------------------------------

def qos_profile(reliability: str = 'reliable', depth: int = 10, durability: str = 'volatile') -> QoSProfile:
    """A QoS profile from the parameter strings nodes declare ('reliable'|'best_effort', ...)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}
    dur = {'volatile': DurabilityPolicy.VOLATILE, 'transient_local': DurabilityPolicy.TRANSIENT_LOCAL}
    if reliability not in rel:
        raise ValueError(f'qos reliability {reliability!r}: expected one of {sorted(rel)}')
    if durability not in dur:
        raise ValueError(f'qos durability {durability!r}: expected one of {sorted(dur)}')
    if depth < 1:
        raise ValueError(f'qos depth {depth}: must be at least 1')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=rel[reliability], durability=dur[durability])


class TensorPublisher:
    """Publishes one frame's tensors on a topic; counts publish failures instead of raising."""

    def __init__(self, node: Node, topic: str, qos: QoSProfile) -> None:
        from autodice_msgs.msg import TensorList

        self.topic = topic
        self.failures = 0
        self._publisher = node.create_publisher(TensorList, topic, qos)

    @property
    def resolved_topic(self) -> str:
        return str(self._publisher.topic_name)

    def get_subscription_count(self) -> int:
        return int(self._publisher.get_subscription_count())

    def publish(self, header: Any, frame: int, tensors: Mapping[str, Any]) -> bool:
        from rclpy._rclpy_pybind11 import RCLError

        msg = encode_list(header, frame, tensors)
        try:
            self._publisher.publish(msg)
        except RCLError:   # reliable floods can fail a publish: count it, keep going
            self.failures += 1
            return False
        return True

    def destroy(self, node: Node) -> None:
        node.destroy_publisher(self._publisher)


class TensorSubscriber:
    """Receives ``TensorList`` messages and hands validated :class:`Frame` objects on.

    A message that fails validation goes to ``on_error`` (log it, count it) and is dropped;
    the callback never sees it.
    """

    def __init__(self, node: Node, topic: str, qos: QoSProfile,
                 expect: Sequence[TensorSpec] | None,
                 on_frame: Callable[[str, Frame], None],
                 on_error: Callable[[str, TensorError], None]) -> None:
        from autodice_msgs.msg import TensorList

        self.topic = topic
        self._expect = list(expect) if expect is not None else None
        self._on_frame = on_frame
        self._on_error = on_error
        self._subscription = node.create_subscription(TensorList, topic, self._receive, qos)

    def _receive(self, msg: Any) -> None:
        try:
            frame = decode_list(msg, self._expect, where=f'topic {self.topic!r}: ')
        except TensorError as exc:
            self._on_error(self.topic, exc)
            return
        self._on_frame(self.topic, frame)

    def destroy(self, node: Node) -> None:
        node.destroy_subscription(self._subscription)

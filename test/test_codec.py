"""Tensor codec: numpy <-> autodice_msgs without DDS (the round trip over DDS is test_roundtrip)."""
from __future__ import annotations

import array

import numpy as np
import pytest
from std_msgs.msg import Header

from autodice_msgs.msg import Tensor, TensorList
from autodice_ros.codec import (
    CODE_DTYPES,
    DTYPE_CODES,
    decode_list,
    decode_tensor,
    encode_list,
    encode_tensor,
    frame_key,
)
from autodice_ros.errors import TensorError
from autodice_ros.manifest import TensorEntry

ALL_DTYPES = sorted(DTYPE_CODES)


def sample(dtype: str, shape: tuple[int, ...] = (2, 3, 4)) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == 'bool':
        return rng.random(shape) > 0.5
    info = np.iinfo(dtype) if np.dtype(dtype).kind in 'iu' else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def test_codes_match_the_message_constants() -> None:
    for name, code in DTYPE_CODES.items():
        assert getattr(Tensor, name.upper()) == code


@pytest.mark.parametrize('dtype', ALL_DTYPES)
def test_every_dtype_round_trips_bit_identical(dtype: str) -> None:
    value = sample(dtype)
    msg = encode_tensor('t', value)
    assert msg.dtype == DTYPE_CODES[dtype]
    assert list(msg.shape) == [2, 3, 4]
    assert len(msg.data) == value.nbytes
    out = decode_tensor(msg)
    assert out.dtype == np.dtype(dtype)
    assert out.tobytes() == value.tobytes()


def test_scalar_and_empty_tensors() -> None:
    scalar = decode_tensor(encode_tensor('s', np.float64(2.5)))
    assert scalar.shape == () and scalar == 2.5
    empty = decode_tensor(encode_tensor('e', np.zeros((0, 7), np.int16)))
    assert empty.shape == (0, 7) and empty.dtype == np.int16


def test_non_contiguous_and_big_endian_inputs_are_written_little_endian_c_order() -> None:
    base = sample('float32', (4, 6, 5))
    strided = base[:, ::2, ::-1]
    assert not strided.flags.c_contiguous
    assert np.array_equal(decode_tensor(encode_tensor('s', strided)), strided)
    fortran = np.asfortranarray(base)
    assert np.array_equal(decode_tensor(encode_tensor('f', fortran)), base)
    big = base.astype('>f4')
    msg = encode_tensor('b', big)
    assert bytes(msg.data) == base.astype('<f4').tobytes()
    assert np.array_equal(decode_tensor(msg), base)


def test_decode_is_a_zero_copy_view() -> None:
    msg = encode_tensor('v', sample('float32'))
    out = decode_tensor(msg)
    assert not out.flags.owndata
    memoryview(msg.data)[0:4] = np.float32(42.0).tobytes()
    assert out.reshape(-1)[0] == 42.0


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(TensorError, match='complex128'):
        encode_tensor('c', np.zeros(3, np.complex128))


def corrupt(**fields: object) -> Tensor:
    msg = encode_tensor('x', np.zeros((2, 3), np.float32))
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(('fields', 'field_name'), [
    ({'dtype': 77}, 'field dtype'),
    ({'shape': [2, 4]}, 'field data'),
    ({'shape': [2**31, 2**31, 2**31]}, 'field data'),
    ({'data': b'\x00' * 5}, 'field data'),
    ({'shape': [1] * 17}, 'field shape'),
])
def test_corrupted_messages_name_the_field(fields: dict, field_name: str) -> None:
    with pytest.raises(TensorError, match=field_name) as info:
        decode_tensor(corrupt(**fields))
    assert "'x'" in str(info.value)


@pytest.mark.parametrize(('spec', 'field_name'), [
    (TensorEntry('y', 'float32', (2, 3), 'in'), 'field name'),
    (TensorEntry('x', 'float16', (2, 3), 'in'), 'field dtype'),
    (TensorEntry('x', 'float32', (3, 2), 'in'), 'field shape'),
])
def test_expectations_from_the_manifest_are_enforced(spec: TensorEntry, field_name: str) -> None:
    with pytest.raises(TensorError, match=field_name):
        decode_tensor(corrupt(), spec)


def header(sec: int = 12, nanosec: int = 345) -> Header:
    h = Header()
    h.stamp.sec, h.stamp.nanosec, h.frame_id = sec, nanosec, 'camera'
    return h


def test_tensor_list_keeps_header_frame_and_selects_expected_tensors() -> None:
    a, b = sample('float32'), sample('int64', (5,))
    msg = encode_list(header(), 99, {'a': a, 'b': b})
    assert isinstance(msg, TensorList)
    frame = decode_list(msg, [TensorEntry('b', 'int64', (5,), 't')])
    assert list(frame.tensors) == ['b'] and np.array_equal(frame.tensors['b'], b)
    assert frame.key == (12, 345, 99) == frame_key(msg.header, msg.frame)
    assert frame.header.frame_id == 'camera'
    everything = decode_list(msg)
    assert set(everything.tensors) == {'a', 'b'}


def test_tensor_list_missing_or_duplicated_tensor_is_refused() -> None:
    msg = encode_list(header(), 1, {'a': sample('float32')})
    with pytest.raises(TensorError, match="'z'.*missing"):
        decode_list(msg, [TensorEntry('z', 'float32', (2, 3, 4), 't')])
    msg.tensors = [msg.tensors[0], msg.tensors[0]]
    with pytest.raises(TensorError, match='twice'):
        decode_list(msg)


def test_every_code_has_a_little_endian_dtype() -> None:
    assert all(dt.byteorder in ('<', '|') for dt in CODE_DTYPES.values())


# -- the descriptor's wire format (written and read without rclpy's message conversion) --------

def _descriptor(rng: np.random.Generator, frame_id: str, host: str, segment: str) -> tuple:
    from autodice_msgs.msg import TensorListRef, TensorRef

    msg = TensorListRef()
    msg.header.stamp.sec = int(rng.integers(-2**31, 2**31))
    msg.header.stamp.nanosec = int(rng.integers(0, 2**32))
    msg.header.frame_id = frame_id
    msg.frame = int(rng.integers(0, 2**64, dtype=np.uint64))
    msg.host = host
    msg.segment = segment
    msg.sequence = int(rng.integers(0, 2**64, dtype=np.uint64))
    for index in range(int(rng.integers(0, 4))):
        ref = TensorRef()
        ref.name = 'é' * index + 'n' * int(rng.integers(0, 7))
        ref.dtype = int(rng.integers(0, 256))
        ref.shape = array.array('I', rng.integers(0, 2**32, size=int(rng.integers(0, 6)), dtype=np.uint64))
        ref.offset = int(rng.integers(0, 2**64, dtype=np.uint64))
        msg.tensors.append(ref)
    return msg


def test_the_descriptor_is_written_and_read_as_rclpy_does() -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    from autodice_msgs.msg import TensorListRef
    from autodice_ros.refwire import RefReader, RefWire

    rng = np.random.default_rng(3)
    reader = RefReader()
    for trial in range(400):
        texts = ['x' * int(rng.integers(0, 13)) + ('ü' if trial % 3 == 0 else '') for _ in range(3)]
        msg = _descriptor(rng, *texts)
        raw = RefWire(msg.host, msg.tensors).encode(msg.header, msg.frame, msg.segment, msg.sequence)
        theirs = serialize_message(msg)      # (its alignment padding is whatever the buffer held)
        assert raw is not None and len(raw) == len(theirs)
        assert deserialize_message(raw, TensorListRef) == msg
        got = reader.decode(theirs)
        assert got is not None
        want = deserialize_message(theirs, TensorListRef)
        assert got.header == want.header and isinstance(got.header, Header)
        assert (got.frame, got.host, got.segment, got.sequence) == (want.frame, want.host, want.segment,
                                                                    want.sequence)
        assert [(t.name, t.dtype, t.shape, t.offset) for t in got.tensors] == \
            [(t.name, t.dtype, tuple(t.shape), t.offset) for t in want.tensors]


def test_unusual_descriptors_are_left_to_rclpy() -> None:
    from rclpy.serialization import serialize_message

    from autodice_ros.refwire import RefReader, RefWire

    rng = np.random.default_rng(4)
    msg = _descriptor(rng, 'cam', 'host', 'seg')
    wire = RefWire(msg.host, msg.tensors)
    msg.header.frame_id = 'a\0b'                       # rclpy cuts at the NUL: leave it to rclpy
    assert wire.encode(msg.header, msg.frame, msg.segment, msg.sequence) is None
    assert wire.encode(msg.header, msg.frame, 'seg\0', msg.sequence) is None
    msg.header.frame_id = 'cam'
    assert wire.encode(msg.header, -1, msg.segment, msg.sequence) is None
    with pytest.raises(ValueError):
        RefWire('ho\0st', msg.tensors)
    raw = serialize_message(msg)
    reader = RefReader()
    assert reader.decode(raw) is not None
    for bad in (raw + b'\0\0\0\0', raw[:-1], b'\0\0' + raw[2:], raw[:12] + b'\xff' + raw[13:],
                b'', b'\0' * 3):
        assert reader.decode(bad) is None
    assert reader.decode(raw.replace(b'cam\0', b'c\xffm\0')) is None         # not UTF-8


def test_tensor_lists_are_read_as_rclpy_reads_them_with_views_of_the_bytes() -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    from autodice_msgs.msg import TensorList
    from autodice_ros.codec import decode_list, encode_list
    from autodice_ros.refwire import ListReader

    rng = np.random.default_rng(5)
    reader = ListReader()
    kinds = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_]
    for trial in range(200):
        tensors = {}
        for k in range(int(rng.integers(0, 4))):
            shape = tuple(int(d) for d in rng.integers(0, 5, int(rng.integers(0, 4))))
            kind = kinds[int(rng.integers(0, len(kinds)))]
            tensors[f't{k}' + ('ü' * (trial % 3))] = (rng.standard_normal(shape) * 50).astype(kind)
        header = Header(frame_id='cam' * int(rng.integers(0, 3)))
        header.stamp.sec, header.stamp.nanosec = int(rng.integers(0, 2**31)), int(rng.integers(0, 10**9))
        raw = serialize_message(encode_list(header, int(rng.integers(0, 2**63)), tensors))
        got, want = reader.decode(raw), deserialize_message(raw, TensorList)
        assert got is not None and got.header == want.header and got.frame == want.frame
        mine, theirs = decode_list(got), decode_list(want)
        assert list(mine.tensors) == list(theirs.tensors) == list(tensors)
        for name, value in tensors.items():
            assert mine.tensors[name].dtype == value.dtype and mine.tensors[name].shape == value.shape
            assert mine.tensors[name].tobytes() == value.tobytes(), name
            assert not mine.tensors[name].flags.writeable and mine.tensors[name].flags.aligned
    raw = serialize_message(encode_list(Header(frame_id='cam'), 7, {'x': np.ones((2, 3), np.float32)}))
    assert np.shares_memory(decode_list(reader.decode(raw)).tensors['x'], np.frombuffer(raw, np.uint8))
    for bad in (raw + b'\0\0\0\0', raw[:-1], b'\0\0' + raw[2:], b'', b'\0' * 3,
                raw.replace(b'cam\0', b'c\xffm\0'), bytearray(raw)):
        assert reader.decode(bad) is None          # rclpy decides (and counts what it refuses)


def test_tensor_lists_are_written_as_rclpy_writes_them() -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    from autodice_msgs.msg import TensorList
    from autodice_ros.codec import encode_list, encode_list_cdr

    rng = np.random.default_rng(6)
    kinds = ['<f4', '>f4', '<f2', '>f8', 'i1', 'u1', '>i2', '<i4', '>i8', '?']
    for trial in range(200):
        tensors = {}
        for k in range(int(rng.integers(0, 4))):
            shape = tuple(int(d) for d in rng.integers(0, 5, int(rng.integers(0, 4))))
            value = (rng.standard_normal(shape) * 50).astype(kinds[int(rng.integers(0, len(kinds)))])
            if value.ndim == 2 and trial % 2:
                value = value.T                                   # not C-contiguous
            tensors[f't{k}' + ('ü' * (trial % 3))] = value
        header = Header(frame_id='cam' * int(rng.integers(0, 3)))
        header.stamp.sec, header.stamp.nanosec = int(rng.integers(-2**31, 2**31)), int(rng.integers(0, 10**9))
        frame = int(rng.integers(0, 2**63))
        raw, msg = encode_list_cdr(header, frame, tensors), encode_list(header, frame, tensors)
        assert raw is not None and len(raw) == len(serialize_message(msg))
        assert deserialize_message(raw, TensorList) == msg
    unusual = Header(frame_id='a\0b')                  # rclpy cuts at the NUL: leave it to rclpy
    assert encode_list_cdr(unusual, 1, {}) is None
    assert encode_list_cdr(Header(), 1, {'x\0': np.zeros(1, np.float32)}) is None
    assert encode_list_cdr(Header(), -1, {}) is None

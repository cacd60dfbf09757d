"""The same-board descriptor (``TensorListRef``) as CDR bytes, written and read directly.

A TensorListRef is a few dozen bytes sent every frame, so the fast path writes and reads its CDR
(what rclpy's serializer makes of it: XCDR1, little-endian) directly, skipping rclpy's generic
message conversion (tens of microseconds a frame each way). Only the header, frame, segment and
sequence change from frame to frame; the host and the tensors are bytes kept from the last frame.
Anything unusual is left to rclpy: the writer sends the message itself, the reader deserializes
with rclpy (which also decides what does not deserialize). Unit tests hold both ends to rclpy's
bytes.

:class:`ListReader` reads a whole ``TensorList`` the same way, its tensors' data as views of the
received bytes: rclpy's ``deserialize_message`` copies a 3.2 MB payload twice (into the C message,
then into Python), 1.8 ms of a receiver's CPU per frame here, on every cross-board hop.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

_CDR_LE = b'\x00\x01\x00\x00'      # encapsulation: plain CDR, little-endian
_STAMP = struct.Struct('<iII')         # header.stamp.sec, .nanosec, header.frame_id's length
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_REF_ITEM = struct.Struct('<B')


def _cdr_string(text: str) -> bytes | None:
    """A CDR string (length with the terminator, UTF-8, NUL); None where rclpy would write other
    bytes (it cuts a string at an embedded NUL) or refuse it."""
    if '\0' in text:
        return None
    try:
        data = text.encode()
    except UnicodeEncodeError:
        return None
    return _U32.pack(len(data) + 1) + data + b'\0'


def _pad(length: int, align: int) -> bytes:
    return b'\0' * (-length % align)


def _write_head(header: Any, frame: int) -> tuple[list[Any], int] | None:
    """The CDR both messages start with (header, then the uint64 frame) and its length; None for
    a frame_id rclpy would write otherwise. Raises what ``header`` or ``struct`` raise."""
    fid = _cdr_string(header.frame_id)
    if fid is None:
        return None
    length = 8 + len(fid)
    parts = [_STAMP.pack(header.stamp.sec, header.stamp.nanosec, 0)[:8], fid, _pad(length, 8),
             _U64.pack(frame)]
    return parts, length + -length % 8 + 8


def _read_head(raw: bytes) -> tuple[Any, int, int]:
    """The header and frame both messages start with, and the position after them (in the CDR
    body, which starts 4 bytes into ``raw``)."""
    if raw[:4] != _CDR_LE:
        raise _MalformedError
    sec, nanosec, _ = _STAMP.unpack_from(raw, 4)
    frame_id, end = _read_string(raw, 4 + 8)
    pos = end - 4
    pos += -pos % 8
    (frame,) = _U64.unpack_from(raw, 4 + pos)
    return _header(sec, nanosec, frame_id), frame, pos + 8


class RefWire:
    """Writes one publisher's TensorListRef CDR for a fixed set of tensors and host."""

    def __init__(self, host: str, tensors: Sequence[Any]) -> None:
        host_cdr = _cdr_string(host)
        if host_cdr is None:
            raise ValueError(f'host {host!r}: rclpy would not write it as it is')
        block = bytearray(_U32.pack(len(tensors)))       # starts 8-aligned (after the sequence)
        for ref in tensors:
            name = _cdr_string(ref.name)
            if name is None:
                raise ValueError(f'tensor name {ref.name!r}: rclpy would not write it as it is')
            block += name + _REF_ITEM.pack(ref.dtype)
            block += _pad(len(block), 4) + _U32.pack(len(ref.shape))
            block += b''.join(_U32.pack(d) for d in ref.shape)
            block += _pad(len(block), 8) + _U64.pack(ref.offset)
        self._host = host_cdr
        self._tensors = bytes(block)
        self._segments: dict[str, bytes] = {}

    def encode(self, header: Any, frame: int, segment: str, sequence: int) -> bytes | None:
        """The serialized descriptor; None when rclpy should serialize this one (an unusual header)."""
        seg = self._segments.get(segment)
        if seg is None:
            seg = _cdr_string(segment)
            if seg is None:
                return None
            self._segments[segment] = seg
        try:
            head = _write_head(header, frame)
            if head is None:
                return None
            parts, length = head
            parts += [self._host]
            length += len(self._host)
            parts += [_pad(length, 4), seg]
            length += -length % 4 + len(seg)
            parts += [_pad(length, 8), _U64.pack(sequence), self._tensors]
        except (AttributeError, TypeError, UnicodeEncodeError, struct.error):
            return None
        return _CDR_LE + b''.join(parts)


class RefView(NamedTuple):
    """One tensor of a descriptor read by :class:`RefReader` (the fields of ``TensorRef``)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    offset: int


class RefDescriptor(NamedTuple):
    """A descriptor read by :class:`RefReader` (the fields of ``TensorListRef``)."""

    header: Any
    frame: int
    host: str
    segment: str
    sequence: int
    tensors: tuple[RefView, ...]


class _MalformedError(Exception):
    pass


def _read_string(raw: bytes, pos: int) -> tuple[str, int]:
    """A CDR string at ``pos`` (4-aligned already); only the ones rclpy reads the same way."""
    (length,) = _U32.unpack_from(raw, pos)
    end = pos + 4 + length
    if length == 0 or end > len(raw) or raw[end - 1] != 0:
        raise _MalformedError
    data = raw[pos + 4:end - 1]
    if b'\0' in data:
        raise _MalformedError
    try:
        return data.decode(), end
    except UnicodeDecodeError:
        raise _MalformedError from None


@cache
def _header_type() -> Any:
    from std_msgs.msg import Header

    return Header


def _header(sec: int, nanosec: int, frame_id: str) -> Any:
    header = _header_type()()
    header.stamp.sec = sec
    header.stamp.nanosec = nanosec
    header.frame_id = frame_id
    return header


class RefReader:
    """Reads TensorListRef CDR; the tensors of the last descriptor are kept (they rarely change)."""

    def __init__(self) -> None:
        self._block = b''
        self._tensors: tuple[RefView, ...] = ()

    def decode(self, raw: bytes) -> RefDescriptor | None:
        """The descriptor; None for anything but plain well-formed CDR (rclpy then decides)."""
        try:
            return self._decode(raw)
        except (_MalformedError, struct.error, IndexError):
            return None

    def _decode(self, raw: bytes) -> RefDescriptor:
        header, frame, pos = _read_head(raw)
        body = raw[4:]
        host, pos = _read_string(body, pos)
        segment, pos = _read_string(body, pos + -pos % 4)
        pos += -pos % 8
        (sequence,) = _U64.unpack_from(body, pos)
        block = body[pos + 8:]
        if block != self._block:
            self._tensors = self._read_tensors(block)
            self._block = block
        return RefDescriptor(header, frame, host, segment, sequence, self._tensors)

    @staticmethod
    def _read_tensors(block: bytes) -> tuple[RefView, ...]:
        """The tensors part (it starts 8-aligned); must end exactly at the message's end."""
        (count,) = _U32.unpack_from(block, 0)
        pos, tensors = 4, []
        for _ in range(count):
            name, pos = _read_string(block, pos + -pos % 4)
            dtype = block[pos]
            pos += 1 + -(pos + 1) % 4
            (rank,) = _U32.unpack_from(block, pos)
            shape = struct.unpack_from(f'<{rank}I', block, pos + 4)
            pos += 4 + 4 * rank
            pos += -pos % 8
            (offset,) = _U64.unpack_from(block, pos)
            pos += 8
            tensors.append(RefView(name, dtype, shape, offset))
        if pos != len(block):
            raise _MalformedError
        return tuple(tensors)


def list_cdr(header: Any, frame: int,
             tensors: Sequence[tuple[str, int, tuple[int, ...], memoryview]]) -> bytes | None:
    """A TensorList's CDR from (name, dtype code, shape, little-endian bytes) per tensor, each
    tensor's bytes copied once; None where rclpy should write it (an unusual header or name)."""
    try:
        head = _write_head(header, frame)
        if head is None:
            return None
        parts, length = head
        parts = [_CDR_LE, *parts, _U32.pack(len(tensors))]
        length += 4
        for name, code, shape, data in tensors:
            text = _cdr_string(name)
            if text is None:
                return None
            parts += [_pad(length, 4), text, _REF_ITEM.pack(code)]
            length += -length % 4 + len(text) + 1
            parts += [_pad(length, 4), _U32.pack(len(shape)), struct.pack(f'<{len(shape)}I', *shape),
                      _U32.pack(len(data)), data]
            length += -length % 4 + 8 + 4 * len(shape) + len(data)
    except (AttributeError, TypeError, UnicodeEncodeError, struct.error):
        return None
    return b''.join(parts)


class TensorView(NamedTuple):
    """One tensor of a TensorList read by :class:`ListReader` (the fields of ``Tensor``); ``data``
    is a read-only view of the received bytes."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    data: memoryview


class ListView(NamedTuple):
    """A TensorList read by :class:`ListReader` (the fields of ``TensorList``)."""

    header: Any
    frame: int
    tensors: tuple[TensorView, ...]


class ListReader:
    """Reads TensorList CDR without copying the tensors' data."""

    def decode(self, raw: bytes) -> ListView | None:
        """The message; None for anything but plain well-formed CDR (rclpy then decides)."""
        try:
            return self._decode(raw)
        except (_MalformedError, struct.error, IndexError, ValueError):
            return None

    @staticmethod
    def _decode(raw: bytes) -> ListView:
        # positions are relative to the CDR body (alignment counts from there), 4 bytes into raw
        if not isinstance(raw, bytes):
            raise _MalformedError
        header, frame, pos = _read_head(raw)
        (count,) = _U32.unpack_from(raw, 4 + pos)
        pos += 4
        view = memoryview(raw)
        tensors = []
        for _ in range(count):
            pos += -pos % 4
            name, end = _read_string(raw, 4 + pos)
            pos = end - 4
            dtype = raw[4 + pos]
            pos += 1 + -(pos + 1) % 4
            (rank,) = _U32.unpack_from(raw, 4 + pos)
            shape = struct.unpack_from(f'<{rank}I', raw, 4 + pos + 4)
            pos += 4 + 4 * rank
            (length,) = _U32.unpack_from(raw, 4 + pos)
            start = 4 + pos + 4
            if start + length > len(raw):
                raise _MalformedError
            tensors.append(TensorView(name, dtype, shape, view[start:start + length]))
            pos += 4 + length
        if 4 + pos != len(raw):
            raise _MalformedError
        return ListView(header, frame, tuple(tensors))

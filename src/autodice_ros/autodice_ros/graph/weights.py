"""ONNX files at the protobuf wire level: the graph without its weight bytes, and fast writing.

Parsing a 550 MB VGG19 with protobuf costs its size twice (the file's bytes and the message),
and copying weights into each sub-model message costs them again. Instead:

- :func:`read_lean` walks the file's wire format with small reads and parses a copy in which
  every initializer above ``KEEP_BYTES`` keeps only its name, dims and type, remembering where
  each initializer's bytes lie in the file (:class:`Span`).
- :func:`write_submodel` writes a model as its small graph message plus, for each initializer,
  the original ``GraphProto.initializer`` field bytes copied from the source file. Protobuf
  allows a message's fields in any order, so the result parses exactly as if serialized whole.
- :func:`write_arrays` does the same with initializers streamed from numpy arrays (the zoo).
  :func:`write_submodel` takes such arrays too, for initializers that are not in the source
  file as they are (a within-layer split's slice of a weight, read through :func:`source_array`).

Peak memory is a few megabytes plus one copy buffer; weights never pass through protobuf.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from autodice_ros.errors import ModelError
from autodice_ros.graph.model import KEEP_BYTES, copy_fields

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5
_CHUNK = 8 << 20


def _wire_types(message: type) -> dict[int, int]:
    """Field number -> wire type of a message's fields (a mismatch means the bytes are not ONNX)."""
    scalar = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
              FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_BOOL}
    return {f.number: _VARINT if f.type in scalar else _LEN
            for f in message.DESCRIPTOR.fields}     # type: ignore[attr-defined]


_MODEL_FIELDS = _wire_types(onnx.ModelProto)
_GRAPH_FIELDS = _wire_types(onnx.GraphProto)
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
# TensorProto fields holding values (float_data, int32_data, string_data, int64_data, raw_data,
# double_data, uint64_data): left out of the lean copy.
_TENSOR_DATA = frozenset({4, 5, 6, 7, 9, 10, 11})
_TENSOR_DATA_LOCATION = 14
_TENSOR_RAW_DATA = 9


class _TruncatedError(Exception):
    pass


class _NotOnnxError(Exception):
    pass


@dataclass(frozen=True)
class Span:
    """Where one initializer lies in a file: its whole ``GraphProto.initializer`` field."""

    offset: int
    length: int


@dataclass
class LeanModel:
    """A model read without its weight bytes: ``model``'s large initializers are name/dims/type."""

    path: Path
    model: onnx.ModelProto
    spans: dict[str, Span]
    stripped: frozenset[str]    # initializers whose values were left out of ``model``
    raw: dict[str, Span]        # where those with raw_data have it in ``path``
    external: bool              # some initializer keeps its values in an external data file


# -- wire format -------------------------------------------------------------------------------

def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _len_field(field: int, payload_length: int) -> bytes:
    """Tag and length of a length-delimited field (the payload follows)."""
    return _key(field, _LEN) + _encode_varint(payload_length)


def _decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _TruncatedError
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _NotOnnxError('a varint longer than 10 bytes')


class _Reader:
    """Positioned reads of a file, reading ahead a little for field headers."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise _TruncatedError
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise _TruncatedError
        return data

    def fields(self, start: int, end: int, known: dict[int, int] | None
               ) -> Iterator[tuple[int, int, int, int, int]]:
        """(field number, wire type, field start, payload start, field end) for [start, end)."""
        pos = start
        while pos < end:
            head = os.pread(self.fd, 20, pos)
            key, at = _decode_varint(head, 0)
            field, wire = key >> 3, key & 7
            if field == 0 or (known is not None and field in known and known[field] != wire):
                raise _NotOnnxError(f'field {field} with wire type {wire} at byte {pos}')
            if known is _MODEL_FIELDS and field not in known:
                raise _NotOnnxError(f'unknown ModelProto field {field} at byte {pos}')
            if wire == _VARINT:
                _, after = _decode_varint(head, at)
                payload, stop = pos + at, pos + after
            elif wire == _I64:
                payload, stop = pos + at, pos + at + 8
            elif wire == _I32:
                payload, stop = pos + at, pos + at + 4
            elif wire == _LEN:
                length, after = _decode_varint(head, at)
                payload, stop = pos + after, pos + after + length
            else:
                raise _NotOnnxError(f'wire type {wire} at byte {pos}')
            if stop > end:
                raise _TruncatedError
            yield field, wire, pos, payload, stop
            pos = stop


def _lean_tensor(reader: _Reader, start: int, payload: int, stop: int
                 ) -> tuple[bytes, Span | None, bool]:
    """The initializer field at [start, stop) without its values, where its raw_data payload
    lies (if it has one and is large), and whether its values are in an external file."""
    if stop - payload <= KEEP_BYTES:
        return reader.read(start, stop - start), None, False
    kept = bytearray()
    raw = None
    external = False
    for field, _wire, at, value, end in reader.fields(payload, stop, None):
        if field == _TENSOR_RAW_DATA:
            raw = Span(value, end - value)
        if field in _TENSOR_DATA:
            continue
        piece = reader.read(at, end - at)
        if field == _TENSOR_DATA_LOCATION:
            external = _decode_varint(piece, value - at)[0] == onnx.TensorProto.EXTERNAL
        kept += piece
    return _len_field(_GRAPH_INITIALIZER, len(kept)) + bytes(kept), raw, external


def _scan(reader: _Reader) -> tuple[bytes, dict[str, Span], set[str], dict[str, Span], bool]:
    """The lean copy of the file's bytes, initializer spans, the stripped initializers, their
    raw_data spans, and whether some weights are external."""
    top = bytearray()
    graph = bytearray()
    spans: dict[str, Span] = {}
    stripped: set[str] = set()
    raws: dict[str, Span] = {}
    external = False
    for field, _wire, start, payload, stop in reader.fields(0, reader.size, _MODEL_FIELDS):
        if field != _MODEL_GRAPH:
            top += reader.read(start, stop - start)
            continue
        for gfield, _gwire, gstart, gpayload, gstop in reader.fields(payload, stop, _GRAPH_FIELDS):
            if gfield != _GRAPH_INITIALIZER:
                graph += reader.read(gstart, gstop - gstart)
                continue
            piece, raw, is_external = _lean_tensor(reader, gstart, gpayload, gstop)
            external |= is_external
            name = onnx.TensorProto.FromString(piece[_header_length(piece):]).name
            spans[name] = Span(gstart, gstop - gstart)
            if gstop - gpayload > KEEP_BYTES:
                stripped.add(name)
            if raw is not None:
                raws[name] = raw
            graph += piece
    lean = bytes(top) + _len_field(_MODEL_GRAPH, len(graph)) + bytes(graph)
    return lean, spans, stripped, raws, external


def _header_length(field_bytes: bytes) -> int:
    """Bytes of tag and length in front of a length-delimited field's payload."""
    _, at = _decode_varint(field_bytes, 0)
    _, at = _decode_varint(field_bytes, at)
    return at


def _describe(exc: Exception, size: int) -> str:
    if isinstance(exc, _TruncatedError):
        return (f'truncated ONNX file: its protobuf fields run past the end of the file '
                f'({size} bytes); copy it again')
    detail = f' ({exc})' if str(exc) else ''
    return f'not an ONNX model: the bytes are not an ONNX protobuf{detail}'


def _open(path: Path) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ModelError(f'{path}: cannot read: {exc.strerror or exc}') from exc
    return fd, os.fstat(fd).st_size


def diagnose(path: str | os.PathLike[str]) -> str:
    """Why protobuf could not parse ``path``: truncated, or not ONNX at all (for messages)."""
    fd, size = _open(Path(path))
    try:
        _scan(_Reader(fd, size))
    except (_TruncatedError, _NotOnnxError) as exc:
        return _describe(exc, size)
    finally:
        os.close(fd)
    return 'not an ONNX model: protobuf cannot parse it'


def read_lean(path: str | os.PathLike[str]) -> LeanModel:
    """Read ``path``'s graph with initializers cut down to metadata; see the module docstring.

    The result passes :func:`autodice_ros.graph.model.check_model` (opsets, structure).
    """
    from autodice_ros.graph.model import check_model
    path = Path(path)
    if not path.is_file():
        raise ModelError(f'{path}: no such file')
    fd, size = _open(path)
    try:
        skeleton, spans, stripped, raws, external = _scan(_Reader(fd, size))
    except (_TruncatedError, _NotOnnxError) as exc:
        raise ModelError(f'{path}: {_describe(exc, size)}') from None
    finally:
        os.close(fd)
    try:
        model = onnx.ModelProto.FromString(skeleton)
    except DecodeError as exc:
        raise ModelError(f'{path}: not an ONNX model: protobuf cannot parse it') from exc
    check_model(model, path)
    return LeanModel(path, model, spans, frozenset(stripped), raws, external)


# -- writing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LazyArray:
    """An initializer written from a numpy array made only when its turn comes (one at a time).

    ``blocks``, where given, yields the values as consecutive blocks along axis 0 instead, so an
    array larger than memory should hold (a slice of a 400 MB weight) is never made whole.
    """

    name: str
    dims: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], np.ndarray]
    blocks: Callable[[], Iterator[np.ndarray]] | None = None

    def header(self) -> bytes:
        """TensorProto fields before raw_data, and raw_data's tag and length."""
        fields = b''.join(_key(1, _VARINT) + _encode_varint(d) for d in self.dims)
        fields += _key(2, _VARINT) + _encode_varint(helper.np_dtype_to_tensor_dtype(self.dtype))
        name = self.name.encode()
        fields += _len_field(8, len(name)) + name
        return fields + _len_field(9, self.nbytes)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) * self.dtype.itemsize


def _model_prefix(model: onnx.ModelProto, graph_extra: int) -> bytes:
    """``model`` serialized with its graph field left open for ``graph_extra`` more bytes."""
    rest = onnx.ModelProto()
    copy_fields(rest, model, 'graph')
    graph = model.graph.SerializeToString()
    return (rest.SerializeToString() + _len_field(_MODEL_GRAPH, len(graph) + graph_extra) + graph)


def _write_atomic(path: Path, pieces: Callable[[Callable[[bytes | memoryview], None]], None]) -> str:
    """Write what ``pieces`` emits to ``path`` via a temp file; returns the sha256 of the bytes."""
    digest = hashlib.sha256()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    except OSError as exc:
        raise ModelError(f'{path}: cannot write here: {exc.strerror or exc}') from exc
    try:
        with os.fdopen(fd, 'wb') as handle:
            def emit(data: bytes | memoryview) -> None:
                digest.update(data)
                handle.write(data)
            pieces(emit)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelError(f'{path}: cannot write: {exc.strerror or exc}') from exc
        raise
    return digest.hexdigest()


@dataclass(frozen=True)
class Written:
    """A sub-model file: its sha256, and where each large initializer's raw_data landed in it."""

    path: Path
    sha256: str
    raw: dict[str, Span]


def write_submodel(path: str | os.PathLike[str], model: onnx.ModelProto, source: LeanModel,
                   initializers: Sequence[str], arrays: Sequence[LazyArray] = ()) -> Written:
    """Write ``model`` (no initializers of its own) plus ``source``'s ``initializers``, verbatim,
    plus ``arrays`` (made one at a time, written in chunks)."""
    path = Path(path)
    if source.external:
        raise ModelError(f'{source.path}: keeps weights in external data files; '
                         f'splitting such models is not supported yet')
    spans = [source.spans[name] for name in initializers]
    headers = [a.header() for a in arrays]
    fields = [len(h) + a.nbytes for h, a in zip(headers, arrays, strict=True)]
    extra = sum(len(_len_field(_GRAPH_INITIALIZER, n)) + n for n in fields)
    prefix = _model_prefix(model, sum(s.length for s in spans) + extra)
    placed: dict[str, Span] = {}
    offset = len(prefix)
    for name, span in zip(initializers, spans, strict=True):
        raw = source.raw.get(name)
        if raw is not None:
            placed[name] = Span(offset + raw.offset - span.offset, raw.length)
        offset += span.length
    for array, head, length in zip(arrays, headers, fields, strict=True):
        offset += len(_len_field(_GRAPH_INITIALIZER, length)) + len(head)
        placed[array.name] = Span(offset, array.nbytes)
        offset += array.nbytes
    fd, size = _open(source.path)

    def pieces(emit: Callable[[bytes | memoryview], None]) -> None:
        emit(prefix)
        for span in spans:
            for start in range(span.offset, span.offset + span.length, _CHUNK):
                length = min(_CHUNK, span.offset + span.length - start)
                data = os.pread(fd, length, start)
                if len(data) != length:
                    raise ModelError(f'{source.path}: changed while being split (now {size} bytes)')
                emit(data)
        for array, head, length in zip(arrays, headers, fields, strict=True):
            emit(_len_field(_GRAPH_INITIALIZER, length) + head)
            _emit_values(emit, array)
    try:
        return Written(path, _write_atomic(path, pieces), placed)
    finally:
        os.close(fd)


def _emit_values(emit: Callable[[bytes | memoryview], None], array: LazyArray) -> None:
    """``array``'s values, little-endian C order, a few MB at a time."""
    dtype = array.dtype.newbyteorder('<')
    if array.blocks is not None:
        rows = 0
        for block in array.blocks():
            if tuple(block.shape[1:]) != array.dims[1:]:
                raise ValueError(f'{array.name}: made a block of shape {block.shape}, promised {array.dims}')
            rows += block.shape[0]
            emit(np.ascontiguousarray(block, dtype=dtype).data.cast('B'))
        if rows != array.dims[0]:
            raise ValueError(f'{array.name}: made {rows} rows, promised {array.dims[0]}')
        return
    values = array.make()
    if tuple(values.shape) != array.dims:
        raise ValueError(f'{array.name}: made shape {values.shape}, promised {array.dims}')
    if values.ndim == 0 or values.nbytes <= _CHUNK:
        emit(np.ascontiguousarray(values, dtype=dtype).data.cast('B'))
        return
    rows = max(1, _CHUNK // max(1, values[0].nbytes))
    for start in range(0, values.shape[0], rows):
        emit(np.ascontiguousarray(values[start:start + rows], dtype=dtype).data.cast('B'))


def _lean_tensor_meta(source: LeanModel, name: str) -> onnx.TensorProto:
    lean = next((t for t in source.model.graph.initializer if t.name == name), None)
    if lean is None:
        raise ModelError(f'{source.path}: no initializer {name!r}')
    return lean


def source_blocks(source: LeanModel, name: str, index: tuple[slice, ...]) -> Iterator[np.ndarray]:
    """``source``'s initializer ``name`` (one with raw_data) cut by ``index`` (one slice per axis,
    step 1), read from the file a few MB of rows at a time: blocks along axis 0 of the result."""
    lean = _lean_tensor_meta(source, name)
    raw = source.raw[name]
    dims = tuple(lean.dims)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(lean.data_type)).newbyteorder('<')
    row_bytes = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    first, stop, _ = index[0].indices(dims[0])
    step = max(1, _CHUNK // max(1, row_bytes))
    fd, _ = _open(source.path)
    try:
        for start in range(first, stop, step):
            count = min(step, stop - start)
            data = os.pread(fd, count * row_bytes, raw.offset + start * row_bytes)
            if len(data) != count * row_bytes:
                raise ModelError(f'{source.path}: changed while being split')
            block = np.frombuffer(data, dtype=dtype).reshape((count, *dims[1:]))
            yield block[(slice(None), *index[1:])]
    finally:
        os.close(fd)


def source_array(source: LeanModel, name: str) -> np.ndarray:
    """The values of ``source``'s initializer ``name`` without reading the whole file: raw_data
    from its place in the file, small tensors from the lean model, others parsed from their span."""
    lean = _lean_tensor_meta(source, name)
    if name in source.raw:
        return np.concatenate(list(source_blocks(source, name, (slice(None),))))
    if name not in source.stripped:
        return numpy_helper.to_array(lean)
    span = source.spans[name]
    fd, _ = _open(source.path)
    try:
        data = os.pread(fd, span.length, span.offset)
    finally:
        os.close(fd)
    return numpy_helper.to_array(onnx.TensorProto.FromString(data[_header_length(data):]))


def _make_external(tensor: onnx.TensorProto, written: Written, source: LeanModel) -> None:
    """Point ``tensor`` at its raw_data in the written file, after checking the byte count."""
    place = written.raw[tensor.name]
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    expected = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    if place.length != expected:
        raise ModelError(f'{source.path}: initializer {tensor.name!r} has {place.length} bytes of '
                         f'raw_data, its shape {list(tensor.dims)} needs {expected}')
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (('location', written.path.name), ('offset', str(place.offset)),
                       ('length', str(place.length))):
        tensor.external_data.add(key=key, value=value)


def check_written(written: Written, model: onnx.ModelProto, source: LeanModel,
                  initializers: Sequence[str], arrays: Sequence[LazyArray] = ()) -> None:
    """``onnx.checker`` full check of a file made by :func:`write_submodel`, without loading it.

    The checker parses a model whole (twice its size for a path). Instead it checks a twin
    that lists the large initializers as external data at their place in the written file:
    the same graph, types and shapes, with the location checked. That each raw_data holds
    exactly its shape's bytes -- the part of the check the twin skips -- is checked here.
    """
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    lean = {t.name: t for t in source.model.graph.initializer}
    for name in initializers:
        tensor = twin.graph.initializer.add()
        tensor.CopyFrom(lean[name])
        if name in written.raw:
            _make_external(tensor, written, source)
        elif name in source.stripped:
            # Large values not in raw_data (float_data, ...) are not in the lean model: check
            # the real file, at the checker's memory cost.
            onnx.checker.check_model(os.fspath(written.path), full_check=True)
            return
    for array in arrays:
        tensor = twin.graph.initializer.add()
        tensor.CopyFrom(onnx.TensorProto(name=array.name, dims=array.dims,
                                         data_type=helper.np_dtype_to_tensor_dtype(array.dtype)))
        _make_external(tensor, written, source)
    fd, tmp = tempfile.mkstemp(prefix=f'.{written.path.stem}.', suffix='.check.onnx',
                               dir=written.path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(twin.SerializeToString())
        onnx.checker.check_model(tmp, full_check=True)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_arrays(path: str | os.PathLike[str], model: onnx.ModelProto, arrays: Sequence[LazyArray]
                 ) -> str:
    """Write ``model`` plus ``arrays`` as initializers (raw_data, little-endian), atomically."""
    path = Path(path)
    headers = [a.header() for a in arrays]
    fields = [len(h) + a.nbytes for h, a in zip(headers, arrays, strict=True)]
    extra = sum(len(_len_field(_GRAPH_INITIALIZER, n)) + n for n in fields)
    prefix = _model_prefix(model, extra)

    def pieces(emit: Callable[[bytes | memoryview], None]) -> None:
        emit(prefix)
        for array, head, length in zip(arrays, headers, fields, strict=True):
            values = np.ascontiguousarray(array.make(), dtype=array.dtype.newbyteorder('<'))
            if values.shape != array.dims:
                raise ValueError(f'{array.name}: made shape {values.shape}, promised {array.dims}')
            emit(_len_field(_GRAPH_INITIALIZER, length) + head)
            emit(values.data.cast('B'))
    return _write_atomic(path, pieces)

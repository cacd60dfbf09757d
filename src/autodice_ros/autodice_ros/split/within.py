"""Within-layer partitioning: one layer's -- or a fused range of layers' -- work shared by several
partitions, exactly. The graph is rewritten into an ordinary one (standard ops only) whose new
nodes are mapped like any other; :mod:`.layerwise` then cuts it as usual.

Modes (each piece ``i`` runs in partition ``i`` of the entry; see :class:`~autodice_ros.mapping.
LayerSplit` for how split points are written):

- ``lop`` (output channels): the range's first layer (Conv, Gemm, MatMul with a constant weight)
  computes a slice of its output channels with its slice of the weights and bias; channel-local
  layers after it (BN, activations, pools, a residual add with the matching slice of the other
  addend) follow on the slice. A grouped or depthwise Conv is cut along its groups: a piece that
  covers whole groups is one Conv with that many groups and the matching input channels, a
  piece that cuts into a group computes that group's part as a plain Conv -- never a Conv with
  the original ``group`` on a slice that does not line up with it.
- ``lip`` (input channels): the first layer's input channels and the matching weight slice;
  the partial outputs are summed where they are consumed, the bias added by one piece only. Only
  linear layers without an offset may follow in the range (the sum must commute with them): a
  range through a non-linear layer is refused, naming it. Grouped Convs: the pieces' partial
  outputs are summed per group.
- ``height`` / ``width`` (spatial tiles): every piece computes a band of the range's output rows
  (columns). Walking back through the range (Conv, pools, LRN, BN, element-wise ops, residual
  adds, channel concats) each tensor's band grows by what each window needs (kernel, stride,
  padding, dilation: DeepThings' fused tile partitioning); a piece's Conv and pool pads keep the
  real image border only -- inner tile edges read the neighbour's rows (the halo) instead.

Where the pieces meet, the rewritten graph carries its own Slice, Concat and Sum, placed where
they save a hop: a piece's sub-model starts with the Slice of its band or channel slice (its
producer's tensor crosses once, as in a layer-wise cut); a consumer's sub-model starts with the
Concat (or Sum) of the pieces, and a consumer that needs only part of a split tensor (a tile of
the next fused range, the channel slice of a LIP piece after a LOP layer) concatenates only
the pieces it overlaps. Weights are sliced from the source file's bytes, a few MB of rows at
a time (:func:`~autodice_ros.graph.weights.source_blocks`); spatial tiles share the
layers' weights, copied as they are.
"""
from __future__ import annotations

from collections import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autodice_ros.errors import MappingError
from autodice_ros.graph.model import ModelGraph, analyze, copy_fields, default_opset, node_inputs
from autodice_ros.graph.weights import LazyArray, LeanModel, source_array, source_blocks
from autodice_ros.manifest import ros_token
from autodice_ros.mapping import LayerSplit, Mapping, build_mapping

SPATIAL_AXIS = {'height': 2, 'width': 3}
_TAG = {'lop': 'lop', 'lip': 'lip', 'height': 'h', 'width': 'w'}
_WEIGHTED = frozenset({'Conv', 'Gemm', 'MatMul'})
_UNARY = frozenset({'Relu', 'LeakyRelu', 'Clip', 'Sigmoid', 'Tanh', 'HardSigmoid', 'HardSwish', 'Elu',
                    'Selu', 'Softplus', 'Softsign', 'Exp', 'Log', 'Abs', 'Neg', 'Sqrt', 'Reciprocal',
                    'Erf', 'Floor', 'Ceil', 'Round', 'Sign', 'Dropout', 'Identity', 'ThresholdedRelu'})
_BINARY = frozenset({'Add', 'Sub', 'Mul', 'Div', 'Sum', 'Max', 'Min', 'Mean', 'Pow', 'PRelu'})
POOLS = frozenset({'MaxPool', 'AveragePool', 'LpPool'})
_GLOBAL_POOLS = frozenset({'GlobalAveragePool', 'GlobalMaxPool', 'GlobalLpPool'})
# Ops that compute each output channel from the same input channel only.
CHANNEL_LOCAL = _UNARY | _BINARY | POOLS | _GLOBAL_POOLS | {'BatchNormalization'}
# Ops that compute each output pixel from a window of input pixels (or the same pixel).
SPATIAL_LOCAL = _UNARY | _BINARY | POOLS | {'Conv', 'BatchNormalization', 'LRN', 'Concat'}
# Ops through which a sum of partial inputs stays a sum of partial outputs (no offset added).
LIP_LINEAR = frozenset({'Dropout', 'Identity', 'AveragePool', 'GlobalAveragePool', 'Reshape', 'Flatten',
                        'Mul', 'Div'})


# -- resolving an entry against the graph --------------------------------------------------------

@dataclass
class Resolved:
    """A within-layer entry checked against the graph: its nodes, the tensor it hands on, and
    each piece's bounds in the mode's unit."""

    split: LayerSplit
    where: str
    positions: list[int]                # compute nodes of the range, topological
    exit: str                           # the one tensor leaving the range
    extent: int                         # channels (lop/lip) or rows/columns (spatial) to share
    bounds: list[tuple[int, int]]

    @property
    def mode(self) -> str:
        return self.split.mode


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    value = _attr(node, name, default)
    return int(value) if isinstance(value, int) else default


def _ints(node: onnx.NodeProto, name: str, default: Sequence[int]) -> list[int]:
    value = _attr(node, name)
    return [int(v) for v in value] if isinstance(value, (list, tuple)) and value else list(default)


def even_bounds(extent: int, pieces: int, align: int = 1) -> list[tuple[int, int]]:
    """``pieces`` nearly equal ranges covering ``extent``; on multiples of ``align`` when it divides."""
    unit = align if align > 1 and extent % align == 0 and (extent // align) >= pieces else 1
    units = extent // unit
    cuts = [round(units * k / pieces) * unit for k in range(pieces + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _bounds(split: LayerSplit, extent: int, where: str, align: int = 1) -> list[tuple[int, int]]:
    """Each piece's [start, stop) from the entry's points (see LayerSplit for the readings)."""
    n = len(split.partitions)
    points = list(split.points)
    field_name = 'sizes' if split.form == 'sizes' else 'points'
    unit = {'lop': 'output channels', 'lip': 'input channels', 'height': 'rows',
            'width': 'columns'}[split.mode]
    if extent < n:
        raise MappingError(f'{where}: field \'partitions\': {n} partitions cannot share {extent} {unit}')
    if split.form == 'even':
        return even_bounds(extent, n, align)

    def bad(why: str) -> MappingError:
        return MappingError(f'{where}: field {field_name!r}: {points} {why} ({extent} {unit} in '
                            f'{len(split.partitions)} pieces)')
    if len(points) != n:
        raise bad(f'has {len(points)} values for {n} partitions')
    if split.form == 'sizes':
        if min(points) < 1:
            raise bad('has an empty piece')
        if sum(points) != extent:
            raise bad(f'adds up to {sum(points)}, not {extent}')
        starts = list(np.cumsum([0, *points[:-1]]))
        return [(int(a), int(a + s)) for a, s in zip(starts, points, strict=True)]
    if points[0] == 0:                                   # the first index of each piece
        ends = [*points[1:], extent]
    elif split.mode == 'lop':                            # AutoDiCE: cumulative ends, the last clamped
        ends = list(points)
    else:                                                # AutoDiCE: sizes, the last clamped
        if min(points) < 1:
            raise bad('has an empty piece')
        ends = [int(e) for e in np.cumsum(points)]
    if ends[-1] < extent:
        raise bad(f'ends at {ends[-1]}, leaving {extent - ends[-1]} {unit} to no piece')
    ends[-1] = extent
    starts = [0, *ends[:-1]]
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if k < n - 1 and b >= extent:
            raise bad(f'runs past the end at {b}')
        if b <= a:
            raise bad(f'has an empty or backwards piece [{a}, {b})')
    return list(zip(starts, ends, strict=True))


def _const_input(graph: ModelGraph, node: onnx.NodeProto, slot: int) -> bool:
    return len(node.input) > slot and bool(node.input[slot]) and graph.is_constant_tensor(node.input[slot])


def _activation_inputs(graph: ModelGraph, node: onnx.NodeProto) -> list[str]:
    return [n for n in node_inputs(node) if not graph.is_constant_tensor(n)]


def _weight_extents(graph: ModelGraph, position: int, where: str) -> tuple[int, int, int]:
    """(output channels, input channels, groups) of a Conv/Gemm/MatMul with a constant weight."""
    node = graph.nodes[position]
    op = node.op_type
    ident = graph.ids[position]
    if op not in _WEIGHTED or not _const_input(graph, node, 1) or graph.is_constant_tensor(node.input[0]):
        raise MappingError(f'{where}: field \'mode\': lop and lip split the channels of a Conv, Gemm or '
                           f'MatMul with a constant weight; {ident!r} is '
                           f'{"an" if op[0] in "AEIOU" else "a"} {op}')
    weight = graph.static_shape(node.input[1])
    if op == 'Conv':
        group = _int(node, 'group', 1)
        return weight[0], weight[1] * group, group
    if op == 'Gemm':
        k, n = (weight[1], weight[0]) if _attr(node, 'transB', 0) else (weight[0], weight[1])
        if len(node.input) > 2 and node.input[2] and not graph.is_constant_tensor(node.input[2]):
            raise MappingError(f'{where}: field \'mode\': Gemm {ident!r} adds a computed C; only a '
                               f'constant bias can be split')
        return n, k, 1
    if len(weight) != 2:
        raise MappingError(f'{where}: field \'mode\': MatMul {ident!r} has a {len(weight)}-d weight; '
                           f'only 2-d weights are split')
    return weight[1], weight[0], 1


def _exits(graph: ModelGraph, positions: list[int]) -> list[str]:
    inside = set(positions)
    leaving = []
    for p in positions:
        for name in graph.nodes[p].output:
            if not name:
                continue
            readers = [c for c in graph.consumers.get(name, ()) if c not in inside]
            if readers or name in graph.outputs:
                leaving.append(name)
    return leaving


def resolve(split: LayerSplit, graph: ModelGraph) -> Resolved:
    """Check ``split`` against ``graph``: the mode suits every layer of the range, one tensor
    leaves it, the points fit. Errors name the entry and the field."""
    where = split.where or f'within-layer entry {split.node!r}'
    first = graph.resolve(split.node)
    last = graph.resolve(split.last) if split.last else first
    assert first is not None and last is not None          # checked by the mapping
    positions = [p for p in range(first, last + 1) if not graph.constant[p]]
    if not positions or graph.constant[first]:
        raise MappingError(f'{where}: {split.node!r} computes a constant; nothing to split')
    exits = _exits(graph, positions)
    span = f'{split.node!r}' + (f'..{split.last!r}' if split.last and split.last != split.node else '')
    if len(exits) != 1:
        raise MappingError(f'{where}: field \'to\': the range {span} hands on {len(exits)} tensors '
                           f'({", ".join(exits[:4])}); end it where exactly one tensor leaves')
    exit_name = exits[0]
    mode = split.mode
    if mode in ('lop', 'lip'):
        cout, cin, group = _weight_extents(graph, first, where)
        _check_channel_range(graph, split, positions, exit_name, where, cout, group)
        extent = cout if mode == 'lop' else cin
        align = max(1, cout // group) if mode == 'lop' and group > 1 else 1
    else:
        extent = _check_spatial_range(graph, positions, exit_name, SPATIAL_AXIS[mode], where)
        align = 1
    return Resolved(split, where, positions, exit_name, extent, _bounds(split, extent, where, align))


def _check_channel_range(graph: ModelGraph, split: LayerSplit, positions: list[int], exit_name: str,
                         where: str, cout: int, group: int) -> None:
    head = positions[0]
    produced = {n for p in positions for n in graph.nodes[p].output if n}
    for p in positions[1:]:
        node = graph.nodes[p]
        ident = graph.ids[p]
        if split.mode == 'lop':
            if node.op_type not in CHANNEL_LOCAL:
                raise MappingError(f'{where}: field \'to\': lop cannot carry channel slices through '
                                   f'{node.op_type} {ident!r} (it mixes channels); end the range before it')
        else:
            if node.op_type not in LIP_LINEAR:
                kind = 'non-linear' if node.op_type not in ('BatchNormalization', 'Add', 'Sub', 'Conv',
                                                             'Gemm', 'Sum') else 'affine'
                raise MappingError(f'{where}: field \'mode\': lip cannot pass through {kind} '
                                   f'{node.op_type} {ident!r}: partial sums must be added before it; '
                                   f'end the range (field \'to\') before {ident!r}')
            if group > 1:
                raise MappingError(f'{where}: field \'to\': lip of the grouped Conv '
                                   f'{graph.ids[head]!r} sums per group; end the range at it')
            if node.op_type in ('Mul', 'Div') and (len(_activation_inputs(graph, node)) != 1 or
                                                   graph.is_constant_tensor(node.input[0])):
                raise MappingError(f'{where}: field \'mode\': lip cannot pass through {node.op_type} '
                                   f'{ident!r} unless it scales by a constant')
        for name in _activation_inputs(graph, node):
            if name in produced:
                continue
            if split.mode == 'lip':
                raise MappingError(f'{where}: field \'to\': {node.op_type} {ident!r} reads {name!r} from '
                                   f'outside the range; lip partial sums would add it once per piece')
            shape = graph.static_shape(name)
            if len(shape) < 2 or shape[1] != cout:
                raise MappingError(f'{where}: field \'to\': {node.op_type} {ident!r} reads {name!r} of shape '
                                   f'{list(shape)}, which does not have the {cout} channels of the range')
        if len([o for o in node.output if o and (graph.consumers.get(o) or o in graph.outputs)]) > 1:
            raise MappingError(f'{where}: field \'to\': {node.op_type} {ident!r} has several outputs in use')
        if node.op_type in POOLS and len(node.output) > 1 and node.output[1]:
            raise MappingError(f'{where}: field \'to\': {ident!r} also outputs indices; not splittable')
    if len(_activation_inputs(graph, graph.nodes[head])) != 1:
        raise MappingError(f'{where}: field \'mode\': {graph.ids[head]!r} reads more than one activation')
    if split.mode == 'lop':
        shape = graph.static_shape(exit_name)
        if len(shape) < 2 or shape[1] != cout:
            raise MappingError(f'{where}: field \'to\': the range hands on {exit_name!r} of shape '
                               f'{list(shape)}, not {cout} channels on axis 1')


def _window(graph: ModelGraph, node: onnx.NodeProto, axis: int
            ) -> tuple[int, int, int, int, int] | None:
    """(kernel, stride, dilation, pad begin, pad end) of a windowed op along spatial ``axis``
    (2 or 3) with auto_pad made explicit; ``None`` for ops that map a pixel to the same pixel."""
    op = node.op_type
    if op not in ('Conv', *POOLS):
        return None
    i = axis - 2
    if op == 'Conv':
        kernel = _ints(node, 'kernel_shape', graph.static_shape(node.input[1])[2:])
    else:
        kernel = _ints(node, 'kernel_shape', [])
    strides = _ints(node, 'strides', [1] * len(kernel))
    dilations = _ints(node, 'dilations', [1] * len(kernel))
    pads = _ints(node, 'pads', [0] * 2 * len(kernel))
    auto = _attr(node, 'auto_pad', b'NOTSET')
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ('SAME_UPPER', 'SAME_LOWER', 'VALID'):
        size_in = graph.static_shape(node.input[0])[axis]
        size_out = graph.static_shape(node.output[0])[axis]
        total = 0 if auto == 'VALID' else max(
            0, (size_out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size_in)
        begin = total // 2 if auto == 'SAME_UPPER' else total - total // 2
        return kernel[i], strides[i], dilations[i], begin, total - begin
    return kernel[i], strides[i], dilations[i], pads[i], pads[i + len(kernel)]


def _check_spatial_range(graph: ModelGraph, positions: list[int], exit_name: str, axis: int,
                         where: str) -> int:
    for p in positions:
        node = graph.nodes[p]
        ident = graph.ids[p]
        if node.op_type not in SPATIAL_LOCAL:
            raise MappingError(f'{where}: field \'to\': {node.op_type} {ident!r} is not a spatially local '
                               f'layer (conv, pool, LRN, normalization, element-wise); spatial tiles '
                               f'cannot pass through it')
        out_shape = graph.static_shape(node.output[0])
        if len(out_shape) != 4:
            raise MappingError(f'{where}: field \'mode\': {ident!r} outputs a {len(out_shape)}-d tensor; '
                               f'spatial tiles need NCHW')
        if node.op_type == 'Concat' and _int(node, 'axis', 0) not in (1, -3):
            raise MappingError(f'{where}: field \'mode\': Concat {ident!r} joins along axis '
                               f'{_attr(node, "axis")}, not channels')
        if node.op_type in POOLS and len(node.output) > 1 and node.output[1]:
            raise MappingError(f'{where}: field \'to\': {ident!r} also outputs indices; not splittable')
        windowed = node.op_type in ('Conv', *POOLS)
        if node.op_type == 'Conv' and not all(graph.is_constant_tensor(n) for n in node.input[1:] if n):
            raise MappingError(f'{where}: field \'mode\': Conv {ident!r} has a computed weight')
        for name in node_inputs(node):
            if graph.is_constant_tensor(name):
                shape = graph.types[name].shape if name in graph.types else ()
                at = len(shape) - (4 - axis)
                if node.op_type not in ('Conv', 'BatchNormalization') and at >= 0 and (shape[at] or 1) > 1:
                    raise MappingError(f'{where}: field \'mode\': {ident!r} reads constant {name!r} that '
                                       f'varies along the split axis')
                continue
            shape = graph.static_shape(name)
            if len(shape) != 4 or (not windowed and shape[axis] != out_shape[axis]):
                raise MappingError(f'{where}: field \'mode\': {ident!r} broadcasts {name!r} of shape '
                                   f'{list(shape)} along the split axis')
    return graph.static_shape(exit_name)[axis]


# -- the rewrite ---------------------------------------------------------------------------------

@dataclass
class _Tiled:
    """A tensor that exists only as pieces along ``axis``: (start, stop, tensor, partition)."""

    axis: int
    pieces: list[tuple[int, int, str, str]]


@dataclass
class _Partial:
    """A tensor that is a sum of partial tensors, per output-channel segment:
    (start, stop, [(tensor, partition), ...])."""

    segments: list[tuple[int, int, list[tuple[str, str]]]]


class _Rewriter:
    def __init__(self, lean: LeanModel, graph: ModelGraph) -> None:
        self.lean = lean
        self.graph = graph
        self.opset = default_opset(graph.model)
        self.nodes: list[onnx.NodeProto] = []
        self.assign: dict[str, str] = {}            # first output of an emitted node -> partition
        self.arrays: dict[str, LazyArray] = {}
        self.split: dict[str, _Tiled | _Partial] = {}
        self.full_names: dict[str, dict[str, str]] = {}        # tensor -> partition -> name
        self.cache: dict[tuple[object, ...], str] = {}
        self.taken = {n for node in graph.model.graph.node for n in (node.name, *node.output) if n}
        self.taken |= {v.name for v in graph.model.graph.input} | set(graph.initializers)

    # -- naming and emitting ----------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f'{base}_{k}', k + 1
        self.taken.add(name)
        return name

    def emit(self, node: onnx.NodeProto, partition: str | None) -> None:
        self.nodes.append(node)
        if partition is not None:
            self.assign[node.output[0]] = partition

    def make(self, op: str, inputs: Sequence[str], base: str, partition: str | None,
             attrs: abc.Mapping[str, object] | None = None, out: str | None = None) -> str:
        out = out or self.fresh(base)
        node = helper.make_node(op, list(inputs), [out], name=out)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in (attrs or {}).items())
        self.emit(node, partition)
        return out

    def constant_ints(self, values: Sequence[int], base: str) -> str:
        out = self.fresh(base)
        tensor = numpy_helper.from_array(np.array(values, dtype=np.int64), out)
        self.emit(helper.make_node('Constant', [], [out], name=out, value=tensor), None)
        return out

    def take(self, tensor: str, axis: int, start: int, stop: int, partition: str | None) -> str:
        """``tensor[start:stop]`` along ``axis`` (a constant tensor's slice follows its readers)."""
        key = ('slice', tensor, axis, start, stop, partition)
        if key not in self.cache:
            stem = f'{tensor}__{axis}_{start}_{stop}'
            if self.opset < 10:
                self.cache[key] = self.make('Slice', [tensor], stem, partition,
                                            {'axes': [axis], 'starts': [start], 'ends': [stop]})
            else:
                args = [self.constant_ints([v], f'{stem}_{what}')
                        for v, what in ((start, 'starts'), (stop, 'ends'), (axis, 'axes'))]
                self.cache[key] = self.make('Slice', [tensor, *args], stem, partition)
        return self.cache[key]

    def copy(self, node: onnx.NodeProto, inputs: Sequence[str], output: str, partition: str,
             attrs: dict[str, object] | None = None) -> None:
        """``node`` with new inputs, one output, and some attributes replaced."""
        new = helper.make_node(node.op_type, list(inputs), [output], name=output, domain=node.domain)
        attrs = dict(attrs or {})
        for a in node.attribute:
            if a.name == 'auto_pad' and 'pads' in attrs:
                continue
            if a.name in attrs:
                new.attribute.append(helper.make_attribute(a.name, attrs.pop(a.name)))
            else:
                new.attribute.append(a)
        for name, value in attrs.items():
            new.attribute.append(helper.make_attribute(name, value))
        self.emit(new, partition)

    # -- weights --------------------------------------------------------------------------------

    def weight(self, name: str, index: tuple[slice, ...], base: str) -> str:
        """A slice of constant ``name``: a new initializer cut from the source file's bytes, or a
        Slice node where the constant is computed (it folds away at load time)."""
        dims = self.graph.static_shape(name)
        index = index + (slice(None),) * (len(dims) - len(index))
        if all(s.start in (None, 0) and s.stop in (None, d) for s, d in zip(index, dims, strict=True)):
            return name
        if name not in self.graph.initializers:
            out = name
            for axis, s in enumerate(index):
                if s.start in (None, 0) and s.stop in (None, dims[axis]):
                    continue
                out = self.take(out, axis, s.start or 0, dims[axis] if s.stop is None else s.stop, None)
            return out
        key = ('weight', name, tuple((s.start, s.stop) for s in index))
        if key not in self.cache:
            new_dims = tuple(len(range(*s.indices(d))) for s, d in zip(index, dims, strict=True))
            out = self.fresh(base)
            dtype = np.dtype(self.graph.types[name].dtype)
            blocks = partial(source_blocks, self.lean, name, index) if name in self.lean.raw else None
            self.arrays[out] = LazyArray(out, new_dims, dtype, partial(_cut, self.lean, name, index), blocks)
            self.cache[key] = out
        return self.cache[key]

    def zeros(self, dtype: np.dtype, base: str) -> str:
        out = self.fresh(base)
        self.arrays[out] = LazyArray(out, (1,), dtype, partial(np.zeros, (1,), dtype))
        return out

    # -- split tensors: whole where needed, or only the part a reader wants -------------------

    def full(self, tensor: str, partition: str) -> str:
        """``tensor`` whole in ``partition``: itself, or the Concat/Sum of its pieces there (the
        first such is named ``tensor``, later ones in other partitions get a suffix)."""
        state = self.split.get(tensor)
        if state is None:
            return tensor
        names = self.full_names.setdefault(tensor, {})
        if partition in names:
            return names[partition]
        target = tensor if not names else self.fresh(f'{tensor}__{ros_token(partition)}')
        self.taken.add(target)
        if isinstance(state, _Tiled):
            parts = [name for _, _, name, _ in state.pieces]
            op, attrs = ('Concat', {'axis': state.axis}) if len(parts) > 1 else ('Identity', {})
        else:
            segments = []
            for _, _, partials in state.segments:
                names_ = [name for name, _ in partials]
                segments.append(names_[0] if len(names_) == 1 else
                                self.make('Sum', names_, f'{tensor}__sum', partition))
            parts = segments
            op, attrs = ('Concat', {'axis': 1}) if len(parts) > 1 else ('Identity', {})
        self.make(op, parts, target, partition, attrs, out=target)
        names[partition] = target
        return target

    def band(self, tensor: str, axis: int, start: int, stop: int, partition: str) -> str:
        """``tensor[start:stop]`` along ``axis`` in ``partition``, from the fewest pieces."""
        extent = self.graph.static_shape(tensor)[axis]
        if start == 0 and stop == extent:
            return self.full(tensor, partition)
        state = self.split.get(tensor)
        if isinstance(state, _Tiled) and state.axis == axis:
            over = [p for p in state.pieces if p[0] < stop and p[1] > start]
            if len(over) == 1 and over[0][0] == start and over[0][1] == stop:
                return over[0][2]
            key = ('band', tensor, tuple(p[2] for p in over), partition)
            if key not in self.cache:
                self.cache[key] = over[0][2] if len(over) == 1 else self.make(
                    'Concat', [p[2] for p in over], f'{tensor}__join', partition, {'axis': axis})
            joined, offset, end = self.cache[key], over[0][0], over[-1][1]
            if offset == start and end == stop:
                return joined
            return self.take(joined, axis, start - offset, stop - offset, partition)
        return self.take(self.full(tensor, partition), axis, start, stop, partition)

    # -- the walk -----------------------------------------------------------------------------

    def run(self, owner: dict[int, str], splits: Sequence[Resolved]) -> None:
        first_of = {r.positions[0]: r for r in splits}
        inside = {p for r in splits for p in r.positions}
        for p, node in enumerate(self.graph.nodes):
            if p in first_of:
                self.range(first_of[p])
            elif p in inside:
                continue
            elif self.graph.constant[p]:
                self.emit(node, None)
            else:
                partition = owner[p]
                new = onnx.NodeProto()
                new.CopyFrom(node)
                del new.input[:]
                new.input.extend(self.full(n, partition) if n else n for n in node.input)
                self.emit(new, partition)
        for output in self.graph.outputs:
            state = self.split.get(output)
            if state is not None and output not in self.full_names.get(output, {}).values():
                last = state.pieces[-1][3] if isinstance(state, _Tiled) else state.segments[-1][2][-1][1]
                self.full(output, last)

    def range(self, r: Resolved) -> None:
        if r.mode == 'lop':
            self.split[r.exit] = _Tiled(1, [])
        for i, (bounds, partition) in enumerate(zip(r.bounds, r.split.partitions, strict=True)):
            if r.mode == 'lop':
                self.lop_piece(r, i, bounds, partition)
            elif r.mode == 'lip':
                self.lip_piece(r, i, bounds, partition)
            else:
                self.spatial_piece(r, i, bounds, partition)

    def piece_name(self, r: Resolved, tensor: str, i: int) -> str:
        return self.fresh(f'{tensor}__{_TAG[r.mode]}{i}')

    def followers(self, r: Resolved, i: int, produced: dict[str, str], partition: str,
                  entry: Callable[[str], str], constant: Callable[[str, onnx.NodeProto], str]) -> None:
        """The range's layers after its first, on piece ``i``'s part."""
        for p in r.positions[1:]:
            node = self.graph.nodes[p]
            if not any(self.live(o, r) for o in node.output if o):
                continue
            inputs = []
            for name in node.input:
                if not name:
                    inputs.append(name)
                elif name in produced:
                    inputs.append(produced[name])
                elif self.graph.is_constant_tensor(name):
                    inputs.append(constant(name, node))
                else:
                    inputs.append(entry(name))
            out = self.piece_name(r, node.output[0], i)
            self.copy(node, inputs, out, partition)
            produced[node.output[0]] = out

    def live(self, tensor: str, r: Resolved) -> bool:
        return tensor == r.exit or bool(self.graph.consumers.get(tensor))

    # -- lop --------------------------------------------------------------------------------

    def lop_piece(self, r: Resolved, i: int, bounds: tuple[int, int], partition: str) -> None:
        head = self.graph.nodes[r.positions[0]]
        a, b = bounds
        x = head.input[0]
        out = self.piece_name(r, head.output[0], i)
        if head.op_type == 'Conv':
            cout, cin, group = _weight_extents(self.graph, r.positions[0], r.where)
            cout_g, cin_g = cout // group, cin // group
            parts = []
            for lo, hi in _group_parts(a, b, cout_g):
                g0, g1 = lo // cout_g, -(-hi // cout_g)
                aligned = lo % cout_g == 0 and hi % cout_g == 0
                groups = g1 - g0 if aligned else 1
                xin = self.band(x, 1, g0 * cin_g, (g0 + groups) * cin_g, partition)
                w = self.weight(head.input[1], (slice(lo, hi),), f'{head.input[1]}__{lo}_{hi}')
                inputs = [xin, w]
                if len(head.input) > 2 and head.input[2]:
                    inputs.append(self.weight(head.input[2], (slice(lo, hi),), f'{head.input[2]}__{lo}_{hi}'))
                name = out if (lo, hi) == (a, b) else self.fresh(f'{out}_{lo}_{hi}')
                self.copy(head, inputs, name, partition, {'group': groups} if group > 1 else None)
                parts.append(name)
            if len(parts) > 1:
                self.make('Concat', parts, out, partition, {'axis': 1}, out=out)
        elif head.op_type == 'Gemm':
            trans_b = bool(_attr(head, 'transB', 0))
            index: tuple[slice, ...] = (slice(a, b),) if trans_b else (slice(None), slice(a, b))
            inputs = [self.full(x, partition), self.weight(head.input[1], index, f'{head.input[1]}__{a}_{b}')]
            if len(head.input) > 2 and head.input[2]:
                c = self.graph.static_shape(head.input[2])
                inputs.append(self.weight(head.input[2], (slice(None),) * (len(c) - 1) + (slice(a, b),),
                                          f'{head.input[2]}__{a}_{b}') if c and c[-1] > 1 else head.input[2])
            self.copy(head, inputs, out, partition)
        else:
            self.copy(head, [self.full(x, partition),
                             self.weight(head.input[1], (slice(None), slice(a, b)),
                                         f'{head.input[1]}__{a}_{b}')], out, partition)
        produced = {head.output[0]: out}
        rank = len(self.graph.static_shape(head.output[0]))
        self.followers(r, i, produced, partition,
                       entry=lambda name: self.band(name, 1, a, b, partition),
                       constant=lambda name, node: self.channel_constant(name, node, rank, a, b))
        state = self.split[r.exit]
        assert isinstance(state, _Tiled)
        state.pieces.append((a, b, produced[r.exit], partition))

    def channel_constant(self, name: str, node: onnx.NodeProto, rank: int, a: int, b: int) -> str:
        """Constant input of a channel-local op, cut to channels [a, b)."""
        shape = self.graph.static_shape(name)
        if node.op_type == 'BatchNormalization':
            axis = 0                                  # per-channel parameters
        else:
            axis = len(shape) - (rank - 1)            # numpy broadcasting against N, C, ...
        if axis < 0 or axis >= len(shape) or shape[axis] == 1:
            return name
        index = (slice(None),) * axis + (slice(a, b),)
        return self.weight(name, index, f'{name}__{a}_{b}')

    # -- lip --------------------------------------------------------------------------------

    def lip_piece(self, r: Resolved, i: int, bounds: tuple[int, int], partition: str) -> None:
        head = self.graph.nodes[r.positions[0]]
        a, b = bounds
        x = head.input[0]
        if i == 0:
            self.split[r.exit] = _Partial([])
        state = self.split[r.exit]
        assert isinstance(state, _Partial)
        bias = len(head.input) > 2 and bool(head.input[2])
        piece = self.piece_name(r, head.output[0], i)
        if head.op_type == 'Conv':
            cout, cin, group = _weight_extents(self.graph, r.positions[0], r.where)
            cout_g, cin_g = cout // group, cin // group
            parts = _group_parts(a, b, cin_g) if group > 1 else [(a, b)]
            for lo, hi in parts:
                index: tuple[slice, ...]
                if group == 1:
                    o0, o1, groups, index = 0, cout, 1, (slice(None), slice(lo, hi))
                else:
                    g0 = lo // cin_g
                    whole = lo % cin_g == 0 and hi % cin_g == 0
                    groups = (hi - lo) // cin_g if whole else 1
                    o0, o1 = g0 * cout_g, (g0 + groups) * cout_g
                    index = (slice(o0, o1),) if whole else \
                        (slice(o0, o1), slice(lo - g0 * cin_g, hi - g0 * cin_g))
                inputs = [self.band(x, 1, lo, hi, partition),
                          self.weight(head.input[1], index, f'{head.input[1]}__i{lo}_{hi}')]
                segment = next((seg for seg in state.segments if seg[:2] == (o0, o1)), None)
                if bias and segment is None:            # the bias, once per output channel
                    inputs.append(self.weight(head.input[2], (slice(o0, o1),), f'{head.input[2]}__{o0}_{o1}'))
                name = piece if len(parts) == 1 else self.fresh(f'{piece}_{lo}_{hi}')
                self.copy(head, inputs, name, partition, {'group': groups} if group > 1 else None)
                if segment is None:
                    state.segments.append((o0, o1, [(name, partition)]))
                    state.segments.sort(key=lambda seg: seg[0])
                else:
                    segment[2].append((name, partition))
        else:
            trans_a = head.op_type == 'Gemm' and bool(_attr(head, 'transA', 0))
            k_axis = 0 if trans_a else len(self.graph.static_shape(x)) - 1
            trans_b = head.op_type == 'Gemm' and bool(_attr(head, 'transB', 0))
            index = (slice(None), slice(a, b)) if trans_b else (slice(a, b),)
            inputs = [self.band(x, k_axis, a, b, partition),
                      self.weight(head.input[1], index, f'{head.input[1]}__i{a}_{b}')]
            if head.op_type == 'Gemm' and bias:
                if i == 0:
                    inputs.append(head.input[2])
                elif self.opset < 11:               # C is required before opset 11: add zero
                    inputs.append(self.zeros(np.dtype(self.graph.types[x].dtype), f'{head.input[2]}__zero'))
            self.copy(head, inputs, piece, partition)
            if not state.segments:
                state.segments.append((0, self.graph.static_shape(head.output[0])[-1], []))
            state.segments[0][2].append((piece, partition))
        if len(r.positions) > 1:
            # Linear layers after it (resolve checked): each partial passes through them, the sum
            # is taken after the range.
            produced = {head.output[0]: piece}
            self.followers(r, i, produced, partition, entry=lambda name: name,
                           constant=lambda name, node: name)
            state.segments[0][2][-1] = (produced[r.exit], partition)

    # -- spatial tiles ------------------------------------------------------------------------

    def spatial_piece(self, r: Resolved, i: int, bounds: tuple[int, int], partition: str) -> None:
        axis = SPATIAL_AXIS[r.mode]
        graph = self.graph
        if i == 0:
            self.split[r.exit] = _Tiled(axis, [])
        need: dict[str, tuple[int, int]] = {r.exit: bounds}
        plans: dict[int, tuple[list[tuple[int, int] | None], dict[str, object]]] = {}
        for p in reversed(r.positions):
            node = graph.nodes[p]
            out = node.output[0]
            if out not in need:
                continue
            reqs, attrs = tile_requirement(graph, node, axis, need[out], r.where)
            plans[p] = (reqs, attrs)
            for name, req in zip(node.input, reqs, strict=True):
                if req is not None:
                    have = need.get(name)
                    need[name] = req if have is None else (min(have[0], req[0]), max(have[1], req[1]))
        produced: dict[str, str] = {}
        for p in r.positions:
            if p not in plans:
                continue
            node = graph.nodes[p]
            reqs, attrs = plans[p]
            inputs = []
            for name, req in zip(node.input, reqs, strict=True):
                if req is None:
                    inputs.append(name)
                    continue
                have = need[name]
                source = produced.get(name)
                if source is None:
                    source = self.band(name, axis, have[0], have[1], partition)
                    produced[name] = source
                if req != have:
                    source = self.take(source, axis, req[0] - have[0], req[1] - have[0], partition)
                inputs.append(source)
            out = self.piece_name(r, node.output[0], i)
            self.copy(node, inputs, out, partition, attrs)
            produced[node.output[0]] = out
        state = self.split[r.exit]
        assert isinstance(state, _Tiled)
        state.pieces.append((bounds[0], bounds[1], produced[r.exit], partition))


def _group_parts(a: int, b: int, size: int) -> list[tuple[int, int]]:
    """[a, b) cut into a partial group at each end and the whole groups between (group = ``size``)."""
    parts = []
    lo = a
    if lo % size and lo < b:
        hi = min(b, (lo // size + 1) * size)
        parts.append((lo, hi))
        lo = hi
    whole = (b // size) * size
    if whole > lo:
        parts.append((lo, whole))
        lo = whole
    if lo < b:
        parts.append((lo, b))
    return parts


def tile_requirement(graph: ModelGraph, node: onnx.NodeProto, axis: int, out: tuple[int, int], where: str
                 ) -> tuple[list[tuple[int, int] | None], dict[str, object]]:
    """For a tile computing ``out`` rows of ``node``'s output: the rows it needs of each input
    (``None`` for constants) and the attributes its copy runs with (pads at real borders only)."""
    oa, ob = out
    window = _window(graph, node, axis)
    size_out = graph.static_shape(node.output[0])[axis]
    if window is None:
        reqs: list[tuple[int, int] | None] = [None if not n or graph.is_constant_tensor(n) else out
                                              for n in node.input]
        return reqs, {}
    kernel, stride, dilation, begin, end = window
    size_in = graph.static_shape(node.input[0])[axis]
    first = oa * stride - begin
    last = (ob - 1) * stride - begin + (kernel - 1) * dilation + 1
    pad_begin = max(0, -first)
    start = max(0, first)
    if ob == size_out:                          # the real bottom (right) border: as the original
        stop, pad_end = size_in, end
    else:
        stop, pad_end = min(size_in, last), max(0, last - size_in)
        if pad_end > end:
            raise MappingError(f'{where}: field \'points\': a tile edge at {ob} of {node.op_type} '
                               f'{node.name or node.output[0]!r} reaches past its padding')
    rank = len(graph.static_shape(node.input[0])) - 2
    pads = _ints(node, 'pads', [0] * 2 * rank)
    if _attr(node, 'auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET', None):
        pads = [0] * 2 * rank
        for other in range(2, 2 + rank):
            w = _window(graph, node, other)
            assert w is not None
            pads[other - 2], pads[other - 2 + rank] = w[3], w[4]
    pads[axis - 2], pads[axis - 2 + rank] = pad_begin, pad_end
    reqs = [None] * len(node.input)
    reqs[0] = (start, stop)
    return reqs, {'pads': pads}


def _cut(lean: LeanModel, name: str, index: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(source_array(lean, name)[index])


# -- entry point ---------------------------------------------------------------------------------

def resolve_all(graph: ModelGraph, mapping: Mapping) -> list[Resolved]:
    return [resolve(s, graph) for s in mapping.layer_splits]


def apply(lean: LeanModel, graph: ModelGraph, mapping: Mapping
          ) -> tuple[ModelGraph, Mapping, dict[str, LazyArray]]:
    """Rewrite ``graph`` for ``mapping``'s within-layer entries; returns the rewritten graph, the
    mapping over it (cut into pieces where the partition graph would cycle), and the new weights."""
    splits = resolve_all(graph, mapping)
    owner: dict[int, str] = {}
    for part in mapping.partitions:
        for ident in part.nodes:
            position = graph.resolve(ident)
            assert position is not None
            owner[position] = part.name
    rewriter = _Rewriter(lean, graph)
    rewriter.run(owner, splits)
    rewritten = _rebuild(graph, rewriter)
    where = [rewriter.assign.get(node.output[0]) for node in rewritten.nodes]
    specs = [replace(part, nodes=tuple(rewritten.ids[k] for k, name in enumerate(where) if name == part.name))
             for part in mapping.partitions]
    bound = build_mapping([spec for spec in specs if spec.nodes], rewritten, mapping.source)
    return rewritten, bound, rewriter.arrays


def _rebuild(graph: ModelGraph, rewriter: _Rewriter) -> ModelGraph:
    source = graph.model
    model = onnx.ModelProto()
    copy_fields(model, source, 'graph')
    copy_fields(model.graph, source.graph, 'node')
    model.graph.node.extend(rewriter.nodes)
    for array in rewriter.arrays.values():
        model.graph.initializer.append(onnx.TensorProto(
            name=array.name, dims=array.dims, data_type=helper.np_dtype_to_tensor_dtype(array.dtype)))
        if source.ir_version < 4:
            model.graph.input.append(helper.make_tensor_value_info(
                array.name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.dims)))
    dims = {name: list(graph.static_shape(name)) for name in graph.inputs}
    return analyze(model, graph.where, dims)

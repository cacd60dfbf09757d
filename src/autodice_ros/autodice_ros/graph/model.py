"""Reading an ONNX model, and the node-level facts every later stage shares.

- Node ids follow AutoDiCE: the ONNX node name, or the first output's name where the name is
  empty (or taken by an earlier node: ids are unique). AutoDiCE's ``format_onnx`` spelling
  (first output name, '/' -> '_') resolves too, so a mapping written against their renamed
  model works on the original.
- Data inputs are the graph inputs that are not initializers: IR-3 files (the Model Zoo's) list
  every weight as a graph input too.
- Shapes come from ONNX shape inference with the batch fixed at 1 (a pipeline carries one frame
  per message). Inference runs on a weight-free copy, so a 550 MB model costs no second copy.
- A node is *constant* when its outputs do not depend on the frame: Constant, ConstantOfShape of
  an initializer, Unsqueeze of a BN scale, Shape of a tensor whose shape is static, and anything
  computed only from those. Mappings need not place them; they follow their consumers.
"""
from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from autodice_ros.errors import ModelError

# ONNX Runtime only guarantees opset >= 7; 25 is the newest default-domain opset checked to load
# in ONNX Runtime 1.32 (newer ops may be missing from it).
MIN_OPSET = 7
MAX_OPSET = 25
_DEFAULT_DOMAINS = ('', 'ai.onnx')
# Other operator domains ONNX Runtime implements.
_RUNTIME_DOMAINS = ('ai.onnx.ml', 'com.microsoft', 'ai.onnx.preview.training')
# Initializers up to this size keep their values in weight-free copies: shape inference needs
# the values of shape-like inputs (Reshape's target shape, ConstantOfShape's shape).
KEEP_BYTES = 4096
# Ops whose output differs between runs even with constant inputs: never constant.
_RANDOM_OPS = frozenset({'RandomNormal', 'RandomUniform', 'RandomNormalLike', 'RandomUniformLike',
                         'Multinomial', 'Bernoulli'})
# Ops whose output depends only on the input's shape.
_SHAPE_OPS = frozenset({'Shape', 'Size'})


def _where(path: str | os.PathLike[str] | None, model: onnx.ModelProto | None = None) -> str:
    if path is not None:
        return str(path)
    return (model.graph.name if model is not None else '') or 'model'


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and sanity-check an ONNX file (weights included); errors name the file.

    Rejects what is not ONNX, a truncated file, and opsets ONNX Runtime does not run.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f'{path}: no such file')
    try:
        model = onnx.load_model(os.fspath(path))
    except DecodeError as exc:
        from autodice_ros.graph.weights import diagnose
        raise ModelError(f'{path}: {diagnose(path)}') from exc
    except OSError as exc:
        raise ModelError(f'{path}: cannot read: {exc.strerror or exc}') from exc
    check_model(model, path)
    return model


def check_model(model: onnx.ModelProto, where: str | os.PathLike[str] | None = None) -> None:
    """What autodice needs of any model: a graph, supported opsets, every tensor produced."""
    place = _where(where, model)
    if not model.HasField('graph') or not model.graph.node:
        raise ModelError(f'{place}: not an ONNX model (no graph nodes); truncated or another format?')
    if not model.graph.output:
        raise ModelError(f'{place}: graph {model.graph.name!r} has no outputs')
    check_opsets(model, place)
    topological_order(model.graph, place)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version; 0 if it imports none."""
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    return max(versions, default=0)


def check_opsets(model: onnx.ModelProto, where: str | os.PathLike[str] | None = None) -> None:
    place = _where(where, model)
    version = default_opset(model)
    if version == 0:
        raise ModelError(f'{place}: opset_import has no default (ai.onnx) domain; truncated file?')
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise ModelError(f'{place}: opset_import ai.onnx version {version} is not supported '
                         f'(ONNX Runtime here runs {MIN_OPSET}..{MAX_OPSET}); convert it with '
                         f'onnx.version_converter')
    local = {f.domain for f in model.functions}
    for opset in model.opset_import:
        if opset.domain not in (*_DEFAULT_DOMAINS, *_RUNTIME_DOMAINS) and opset.domain not in local:
            raise ModelError(f'{place}: opset_import domain {opset.domain!r} is not one ONNX Runtime '
                             f'implements')


# -- node ids ----------------------------------------------------------------------------------

def node_id(node: onnx.NodeProto) -> str:
    """AutoDiCE's node id: the ONNX name, or the first output's name where the name is empty."""
    return node.name or (node.output[0] if node.output else '')


def autodice_alias(node: onnx.NodeProto) -> str:
    """The name AutoDiCE's ``format_onnx`` gives a node: its first output's, with '/' -> '_'."""
    return node.output[0].replace('/', '_') if node.output else ''


# -- graph structure ---------------------------------------------------------------------------

def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that carry data: not initializers (IR-3 files list weights as inputs too)."""
    constants = {t.name for t in model.graph.initializer}
    constants.update(t.values.name for t in model.graph.sparse_initializer)
    return [value for value in model.graph.input if value.name not in constants]


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in _subgraphs(node):
            used |= _outer_names(sub)
        local.update(node.output)
    return used - local


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs (If, Loop) take from outside."""
    names = [n for n in node.input if n]
    for sub in _subgraphs(node):
        names.extend(sorted(_outer_names(sub) - set(names)))
    return names


def topological_order(graph: onnx.GraphProto, where: str | os.PathLike[str] | None = None
                      ) -> list[onnx.NodeProto]:
    """Nodes in a topological order, as close to the file's order as dependencies allow."""
    place = str(where) if where is not None else (graph.name or 'graph')
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    available.update(t.values.name for t in graph.sparse_initializer)
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    waiting: list[set[int]] = []
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        deps = set()
        for name in node_inputs(node):
            if name in producer:
                deps.add(producer[name])
            elif name not in available:
                raise ModelError(f'{place}: node {node_id(node)!r} reads tensor {name!r} that no node, '
                                 f'input or initializer produces (truncated or broken model)')
        waiting.append(deps)
        for dep in deps:
            readers.setdefault(dep, []).append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph.node[i])
        for reader in readers.get(i, ()):
            waiting[reader].discard(i)
            if not waiting[reader]:
                heapq.heappush(ready, reader)
    if len(order) != len(graph.node):
        stuck = next(graph.node[i] for i, deps in enumerate(waiting) if deps)
        raise ModelError(f'{place}: the graph has a cycle through node {node_id(stuck)!r}')
    for out in graph.output:
        if out.name not in producer and out.name not in available:
            raise ModelError(f'{place}: graph output {out.name!r} is produced by no node '
                             f'(truncated or broken model)')
    return order


# -- shapes and types --------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; ``None`` marks a dimension inference left unknown."""

    elem_type: int                      # onnx.TensorProto.DataType
    shape: tuple[int | None, ...]

    @property
    def dtype(self) -> str:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type)).name

    @property
    def static(self) -> bool:
        return all(d is not None for d in self.shape)

    @property
    def nbytes(self) -> int:
        """Size in bytes, counting unknown dimensions as 1."""
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type)).itemsize
        return math.prod(d or 1 for d in self.shape) * itemsize


def copy_fields(target: object, source: object, skip: str) -> None:
    """Copy every set field of protobuf ``source`` into ``target`` except field ``skip``."""
    for desc, value in source.ListFields():  # type: ignore[attr-defined]
        if desc.name == skip:
            continue
        if desc.is_repeated:
            getattr(target, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(target, desc.name).CopyFrom(value)
        else:
            setattr(target, desc.name, value)


def tensor_metadata(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of ``tensor`` without its values: name, dims and element type."""
    return onnx.TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)


def strip_weights(model: onnx.ModelProto, keep_bytes: int = KEEP_BYTES) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``keep_bytes`` hold only name, dims and type.

    Enough for shape inference, costs and graph surgery, at a tiny fraction of the memory.
    """
    light = onnx.ModelProto()
    copy_fields(light, model, 'graph')
    copy_fields(light.graph, model.graph, 'initializer')
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= keep_bytes:
            light.graph.initializer.add().CopyFrom(tensor)
        else:
            light.graph.initializer.append(tensor_metadata(tensor))
    return light


def _value_type(value: onnx.ValueInfoProto) -> TensorType | None:
    if not value.type.HasField('tensor_type'):
        return None
    tensor = value.type.tensor_type
    if not tensor.elem_type:
        return None
    if not tensor.HasField('shape'):
        return TensorType(tensor.elem_type, ())
    return TensorType(tensor.elem_type, tuple(d.dim_value if d.HasField('dim_value') else None
                                              for d in tensor.shape.dim))


def _fix_input_dims(model: onnx.ModelProto, dims: Mapping[str, Sequence[int]], where: str) -> None:
    """Set data inputs' symbolic dimensions: the batch to 1, others from ``dims`` where given."""
    for value in data_inputs(model):
        shape = value.type.tensor_type.shape
        wanted = dims.get(value.name)
        if wanted is not None and len(wanted) != len(shape.dim):
            raise ModelError(f'{where}: input {value.name!r} has {len(shape.dim)} dimensions, '
                             f'not {len(wanted)}')
        for axis, dim in enumerate(shape.dim):
            if wanted is not None and wanted[axis] > 0:
                if dim.HasField('dim_value') and dim.dim_value != wanted[axis]:
                    raise ModelError(f'{where}: input {value.name!r} dimension {axis} is fixed at '
                                     f'{dim.dim_value}, not {wanted[axis]}')
                dim.dim_value = wanted[axis]
            elif axis == 0 and not dim.HasField('dim_value'):
                dim.dim_value = 1


def tensor_types(model: onnx.ModelProto, where: str | os.PathLike[str] | None = None,
                 input_dims: Mapping[str, Sequence[int]] | None = None) -> dict[str, TensorType]:
    """Element type and shape of every tensor (inputs, initializers, intermediates, outputs).

    The batch dimension of data inputs is fixed at 1; ``input_dims`` fixes other symbolic input
    dimensions (0 leaves one as it is). Runs on a weight-free copy of ``model``.
    """
    place = _where(where, model)
    light = strip_weights(model)
    order = topological_order(light.graph, place)       # inference reads the nodes in file order
    del light.graph.node[:]
    light.graph.node.extend(order)
    _fix_input_dims(light, input_dims or {}, place)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f'{place}: shape inference failed: {first}') from exc
    graph = inferred.graph
    types: dict[str, TensorType] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        found = _value_type(value)
        if found is not None:
            types[value.name] = found
    for tensor in graph.initializer:
        types[tensor.name] = TensorType(tensor.data_type, tuple(tensor.dims))
    return types


# -- the shared node-level view ----------------------------------------------------------------

@dataclass
class ModelGraph:
    """A model's nodes in topological order with ids, tensor types, producers and consumers.

    Built once by :func:`analyze`; the mapping, the splitter and the partitioner all read it.
    """

    model: onnx.ModelProto
    where: str
    nodes: list[onnx.NodeProto]
    ids: list[str]
    types: dict[str, TensorType]
    inputs: list[str]                       # data inputs, in graph order
    outputs: list[str]
    initializers: dict[str, onnx.TensorProto]
    producer: dict[str, int]                # tensor -> position in ``nodes``
    consumers: dict[str, list[int]]         # tensor -> positions in ``nodes``
    constant: list[bool]                    # node only produces frame-independent values
    _lookup: dict[str, int] = field(default_factory=dict, repr=False)

    def resolve(self, ident: str) -> int | None:
        """Position of the node called ``ident`` (id, first output, or AutoDiCE spelling)."""
        position = self._lookup.get(ident)
        if position == -1:
            raise ModelError(f'{self.where}: node id {ident!r} names more than one node')
        return position

    def compute_nodes(self) -> list[int]:
        """Positions of the nodes a mapping must place: all but the constant ones."""
        return [i for i, const in enumerate(self.constant) if not const]

    def static_shape(self, name: str) -> tuple[int, ...]:
        found = self.types.get(name)
        if found is None:
            raise ModelError(f'{self.where}: shape inference found no type for tensor {name!r}')
        if not found.static:
            raise ModelError(f'{self.where}: tensor {name!r} has shape {list(found.shape)} with '
                             f'unknown dimensions; export the model with a fixed input size')
        return tuple(d for d in found.shape if d is not None)

    def is_constant_tensor(self, name: str) -> bool:
        if name in self.initializers:
            return True
        position = self.producer.get(name)
        return position is not None and self.constant[position]


def _index(ids: Iterable[tuple[str, int]], lookup: dict[str, int]) -> None:
    """Add names to ``lookup``; a name already taken by another node becomes ambiguous (-1)."""
    for name, position in ids:
        if not name:
            continue
        if name not in lookup:
            lookup[name] = position
        elif lookup[name] != position:
            lookup[name] = -1


def analyze(model: onnx.ModelProto, where: str | os.PathLike[str] | None = None,
            input_dims: Mapping[str, Sequence[int]] | None = None) -> ModelGraph:
    """Build the :class:`ModelGraph` of ``model`` (``where`` names it in error messages)."""
    place = _where(where, model)
    nodes = topological_order(model.graph, place)
    types = tensor_types(model, place, input_dims)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node_inputs(node):
            consumers.setdefault(name, []).append(i)
        for name in node.output:
            if name:
                producer[name] = i
    initializers = {t.name: t for t in model.graph.initializer}
    constant_tensors = set(initializers)
    constant: list[bool] = []
    for node in nodes:
        if node.op_type in _RANDOM_OPS or any(True for _ in _subgraphs(node)):
            const = False
        elif node.op_type in _SHAPE_OPS and node.domain in _DEFAULT_DOMAINS:
            source = types.get(node.input[0])
            const = source is not None and source.static
        else:
            const = all(name in constant_tensors for name in node_inputs(node))
        if const:
            constant_tensors.update(n for n in node.output if n)
        constant.append(const)
    ids: list[str] = []
    lookup: dict[str, int] = {}
    for node in nodes:
        ident = node_id(node)
        if ident in lookup and node.output:     # a name used twice: the later node goes by its output
            ident = node.output[0]
        if ident in lookup:
            raise ModelError(f'{place}: two nodes are both called {ident!r}')
        lookup[ident] = len(ids)
        ids.append(ident)
    # Where a node has a name, its first output's name and AutoDiCE's spelling resolve too,
    # unless another node already answers to them.
    extra: dict[str, int] = {}
    _index(((n.output[0], i) for i, n in enumerate(nodes) if n.output), extra)
    _index(((autodice_alias(n), i) for i, n in enumerate(nodes)), extra)
    for name, position in extra.items():
        lookup.setdefault(name, position)
    return ModelGraph(
        model=model, where=place, nodes=nodes, ids=ids, types=types,
        inputs=[v.name for v in data_inputs(model)], outputs=[v.name for v in model.graph.output],
        initializers=initializers, producer=producer, consumers=consumers, constant=constant,
        _lookup=lookup)

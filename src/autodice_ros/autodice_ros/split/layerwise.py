"""Layer-wise graph surgery: a :class:`Mapping` over a :class:`ModelGraph` -> one sub-model each.

Like ``onnx.utils.Extractor`` (inputs and outputs named, the nodes between them kept), but done
once for all partitions on a model already analysed: no re-parsing, no per-partition shape
inference, and no weights touched -- a :class:`SubModel` names the initializers it uses and
the writer copies their bytes from the source file (:mod:`autodice_ros.graph.weights`).

Per partition:

- nodes: its compute nodes plus the constant nodes they read from (duplicated wherever read).
  ``Shape``/``Size`` of a tensor computed elsewhere become ``Constant``s of its static shape, so
  no activation crosses a cut only for its shape;
- inputs: exactly the tensors it reads that other partitions or the camera produce (several
  where a residual or concat branch crosses the cut), in order of first use;
- outputs: exactly the tensors it computes that other partitions or the model's outputs read;
- initializers: only those its nodes read (IR < 4 lists them as graph inputs too, as IR 3 requires);
- the source's opset imports, IR version and local functions, and ``value_info`` with every
  intermediate tensor's inferred type, so the sub-model is valid and shape-inferred as written.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autodice_ros import __version__
from autodice_ros.errors import SplitError
from autodice_ros.graph.model import ModelGraph, copy_fields, node_inputs
from autodice_ros.mapping import Mapping, PartitionSpec


@dataclass
class SubModel:
    """One partition's model, its initializers still in the source file."""

    spec: PartitionSpec
    model: onnx.ModelProto              # no initializers: write with graph.weights.write_submodel
    initializers: list[str]
    inputs: list[str]                   # tensors crossing in
    outputs: list[str]                  # tensors leaving


def _value_info(graph: ModelGraph, name: str, where: str) -> onnx.ValueInfoProto:
    found = graph.types.get(name)
    if found is None:
        raise SplitError(f'{where}: shape inference found no type for tensor {name!r}')
    return helper.make_tensor_value_info(name, found.elem_type, list(graph.static_shape(name)))


def _shape_constant(graph: ModelGraph, node: onnx.NodeProto) -> onnx.NodeProto:
    """A ``Constant`` with the value a ``Shape``/``Size`` node computes from a static shape."""
    shape = graph.static_shape(node.input[0])
    if node.op_type == 'Size':
        value = np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    else:
        attrs = {a.name: a.i for a in node.attribute}     # opset 15: start/end, Python slice rules
        value = np.array(shape[attrs.get('start', 0):attrs.get('end')], dtype=np.int64)
    return helper.make_node('Constant', [], [node.output[0]], name=node.name,
                            value=numpy_helper.from_array(value))


def _closure(graph: ModelGraph, compute: Iterable[int]) -> list[int]:
    """The compute nodes plus every constant node they depend on, in topological order."""
    chosen = set(compute)
    todo = list(chosen)
    while todo:
        node = graph.nodes[todo.pop()]
        for name in node_inputs(node):
            producer = graph.producer.get(name)
            if producer is not None and graph.constant[producer] and producer not in chosen:
                chosen.add(producer)
                if graph.nodes[producer].op_type not in ('Shape', 'Size') or \
                        graph.is_constant_tensor(graph.nodes[producer].input[0]):
                    todo.append(producer)
    return sorted(chosen)


def cut(graph: ModelGraph, mapping: Mapping) -> list[SubModel]:
    """One :class:`SubModel` per partition of ``mapping``, in the mapping's (topological) order."""
    position = {graph.ids[i]: i for i in range(len(graph.nodes))}
    owner: dict[int, int] = {}
    for k, spec in enumerate(mapping.partitions):
        for node in spec.nodes:
            owner[position[node]] = k
    # Who reads each compute node's outputs: other partitions, the model's outputs.
    wanted: list[set[str]] = [set() for _ in mapping.partitions]
    graph_outputs = set(graph.outputs)
    for name in graph.outputs:
        producer = graph.producer.get(name)
        if producer is None or graph.constant[producer]:
            raise SplitError(f'{graph.where}: model output {name!r} is not computed from the input; '
                             f'nothing to split')
    for reader in owner:
        for name in node_inputs(graph.nodes[reader]):
            producer = graph.producer.get(name)
            if producer is not None and producer in owner and owner[producer] != owner[reader]:
                wanted[owner[producer]].add(name)
    return [_sub_model(graph, spec, [p for p in sorted(owner) if owner[p] == k],
                       wanted[k] | {n for p in owner if owner[p] == k
                                    for n in graph.nodes[p].output if n in graph_outputs})
            for k, spec in enumerate(mapping.partitions)]


def _sub_model(graph: ModelGraph, spec: PartitionSpec, compute: list[int], leaving: set[str]
               ) -> SubModel:
    where = f'{graph.where}: partition {spec.name!r}'
    nodes: list[onnx.NodeProto] = []
    produced: set[str] = set()
    inputs: list[str] = []
    initializers: list[str] = []
    outputs: list[str] = []
    seen: set[str] = set()
    for p in _closure(graph, compute):
        node = graph.nodes[p]
        if node.op_type in ('Shape', 'Size') and graph.constant[p] and \
                not graph.is_constant_tensor(node.input[0]):
            nodes.append(_shape_constant(graph, node))
            produced.add(node.output[0])
            continue
        for name in node_inputs(node):
            if name in produced or name in seen:
                continue
            seen.add(name)
            if name in graph.initializers:
                initializers.append(name)
            else:
                inputs.append(name)
        nodes.append(node)
        produced.update(n for n in node.output if n)
        if not graph.constant[p]:
            outputs.extend(n for n in node.output if n in leaving)
    if not outputs:
        raise SplitError(f'{where}: computes nothing that another partition or the model output '
                         f'reads')
    source = graph.model
    model = onnx.ModelProto()
    copy_fields(model, source, 'graph')
    model.producer_name, model.producer_version = 'autodice', __version__
    model.doc_string = f'partition {spec.name} of {source.graph.name or "the model"}'
    helper.set_model_props(model, {**{p.key: p.value for p in source.metadata_props},
                                   'autodice.partition': spec.name})
    value_inputs = [_value_info(graph, name, where) for name in inputs]
    if source.ir_version < 4:       # IR 3: every initializer must also be a graph input
        value_inputs += [_value_info(graph, name, where) for name in initializers]
    internal = produced - set(outputs)
    model.graph.CopyFrom(helper.make_graph(
        nodes, f'{source.graph.name}_{spec.name}', value_inputs,
        [_value_info(graph, name, where) for name in outputs],
        value_info=[_value_info(graph, name, where) for name in sorted(internal)
                    if name in graph.types and graph.types[name].static]))
    return SubModel(spec, model, initializers, inputs, outputs)

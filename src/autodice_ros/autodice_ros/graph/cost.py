"""Static per-node costs: FLOPs and the bytes a node reads and writes.

These feed the roofline cost model (:mod:`autodice_ros.profile`) and the partitioner's memory
and traffic terms, so they must come out of any model without running it. Conventions:

- FLOPs count a multiply-add as 2 (VGG19 is about 39 GFLOPs: the 19.6 G multiply-adds often
  quoted as "GFLOPs"); a bias add, a comparison, an exp each count 1.
- ``param_bytes`` are a node's constant inputs: initializers and tensors computed only from
  constants (densenet's ``Unsqueeze`` of a BN scale). Constant nodes themselves (see
  :mod:`autodice_ros.graph.model`) cost nothing: ONNX Runtime folds them, a mapping does not
  place them, and their output is counted once, as a parameter of its consumers.
- ``activation_bytes`` are the node's outputs, ``input_bytes`` its non-constant inputs.
- Unknown dimensions count as 1 (the pipeline carries one frame per message).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from autodice_ros.graph.model import ModelGraph, TensorType, analyze

Shape = tuple[int, ...]

# Ops whose cost is moving bytes, not arithmetic.
_MOVES = frozenset({'Reshape', 'Transpose', 'Unsqueeze', 'Squeeze', 'Flatten', 'Concat', 'Split',
                    'Slice', 'Gather', 'Identity', 'Dropout', 'Pad', 'Shape', 'Cast', 'Expand',
                    'Tile', 'DepthToSpace', 'SpaceToDepth', 'ConstantOfShape', 'Constant'})
# Element-wise ops: FLOPs per output element.
_ELEMENTWISE = {'Relu': 1, 'LeakyRelu': 2, 'PRelu': 2, 'Clip': 2, 'Sigmoid': 4, 'Tanh': 4,
                'HardSigmoid': 3, 'HardSwish': 4, 'Exp': 1, 'Log': 1, 'Sqrt': 1, 'Neg': 1,
                'Abs': 1, 'Reciprocal': 1, 'Erf': 4, 'Elu': 3, 'Selu': 3, 'Softplus': 3}
# Variadic / broadcasting arithmetic: (inputs - 1) FLOPs per output element.
_ARITHMETIC = frozenset({'Add', 'Sub', 'Mul', 'Div', 'Sum', 'Max', 'Min', 'Mean', 'Pow'})


@dataclass(frozen=True)
class NodeCost:
    """What one node costs, independent of the machine it runs on."""

    id: str
    op: str
    flops: int
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    output_shapes: tuple[Shape, ...] = ()
    constant: bool = False

    @property
    def bytes(self) -> int:
        """Bytes the node touches once: inputs, weights, outputs (the roofline's memory term)."""
        return self.input_bytes + self.param_bytes + self.activation_bytes


def _shape(types: dict[str, TensorType], name: str) -> Shape:
    found = types.get(name)
    return tuple(d or 1 for d in found.shape) if found is not None else ()


def _nbytes(types: dict[str, TensorType], name: str) -> int:
    found = types.get(name)
    return found.nbytes if found is not None and name else 0


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _flops(node: onnx.NodeProto, types: dict[str, TensorType]) -> int:
    """FLOPs of one node from its input and output shapes (see the module docstring)."""
    op = node.op_type
    out = math.prod(_shape(types, node.output[0])) if node.output else 0
    inputs = [_shape(types, name) for name in node.input]
    if op in ('Conv', 'ConvTranspose'):
        weight = inputs[1]
        per_output = math.prod(weight[1:])          # C_in / group * kernel
        if op == 'ConvTranspose':                   # weight is (C_in, C_out / group, k...)
            per_output = weight[0] // max(1, _int(node, 'group', 1)) * math.prod(weight[2:])
        bias = out if len(node.input) > 2 and node.input[2] else 0
        return 2 * out * per_output + bias
    if op == 'Gemm':
        b = inputs[1]                               # the weight: its shape is always known
        k = b[1] if _int(node, 'transB', 0) else b[0]
        bias = out if len(node.input) > 2 and node.input[2] else 0
        return 2 * out * k + bias
    if op == 'MatMul':
        return 2 * out * inputs[0][-1]
    if op == 'BatchNormalization':
        return 2 * out
    if op == 'LRN':
        size = _int(node, 'size', 1)          # squares and sums over the window, scale, pow, div
        return out * (2 * size + 3)
    if op in ('MaxPool', 'AveragePool', 'LpPool'):
        return out * math.prod(_ints(node, 'kernel_shape'))
    if op in ('GlobalAveragePool', 'GlobalMaxPool', 'ReduceMean', 'ReduceSum', 'ReduceMax'):
        return math.prod(inputs[0])
    if op in ('Softmax', 'LogSoftmax'):
        return 5 * out                              # max, subtract, exp, sum, divide
    if op in _ARITHMETIC:
        return out * max(1, len(node.input) - 1)
    if op in _ELEMENTWISE:
        return out * _ELEMENTWISE[op]
    if op in _MOVES:
        return 0
    return out                                      # unknown op: one FLOP per output element


def node_costs(model: onnx.ModelProto | ModelGraph) -> list[NodeCost]:
    """Cost of every node of ``model`` in its topological order (:attr:`ModelGraph.nodes`).

    Pass a :class:`ModelGraph` where one is already built, to skip a second shape inference.
    """
    graph = model if isinstance(model, ModelGraph) else analyze(model)
    types = graph.types
    costs = []
    for position, node in enumerate(graph.nodes):
        outputs = [name for name in node.output if name]
        constant = graph.constant[position]
        params = inputs = 0
        if not constant:
            params = sum(_nbytes(types, n) for n in node.input if n and graph.is_constant_tensor(n))
            inputs = sum(_nbytes(types, n) for n in node.input if n and not graph.is_constant_tensor(n))
        costs.append(NodeCost(
            id=graph.ids[position], op=node.op_type,
            flops=0 if constant else _flops(node, types),
            param_bytes=params, activation_bytes=sum(_nbytes(types, n) for n in outputs),
            input_bytes=inputs, output_shapes=tuple(_shape(types, n) for n in outputs),
            constant=constant))
    return costs

"""A small model spelled the way torch.onnx exports them, built with onnx.helper (no torch here).

IR 8 / opset 17, weights as initializers that are not graph inputs, a dynamic batch, tensor
names like ``input.1``, ``onnx::Relu_5`` and ``/layer1/conv/Conv_output_0``, one unnamed node,
a residual add, and the ``x.size(0)`` flatten idiom: Shape(input) -> Gather -> Unsqueeze ->
Concat -> Reshape, whose Shape reads the model input from the far end of the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CROSSING_CUT = '/layer1/conv/Conv'      # cut after it: two tensors cross (residual)
POOL = '/pool/GlobalAveragePool'


def build(path: Path) -> Path:
    rng = np.random.default_rng(7)

    def weight(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    def const(name: str, output: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node('Constant', [], [output], name=name,
                                value=numpy_helper.from_array(np.array(values, dtype=np.int64)))

    nodes = [
        helper.make_node('Shape', ['input.1'], ['/Shape_output_0'], name='/Shape'),
        const('/Constant', '/Constant_output_0', [0]),
        helper.make_node('Gather', ['/Shape_output_0', '/Constant_output_0'], ['/Gather_output_0'],
                         name='/Gather', axis=0),
        helper.make_node('Conv', ['input.1', 'conv1.weight', 'conv1.bias'], ['/conv1/Conv_output_0'],
                         name='/conv1/Conv', pads=[1, 1, 1, 1]),
        helper.make_node('Relu', ['/conv1/Conv_output_0'], ['onnx::Relu_5'], name=''),
        helper.make_node('Conv', ['onnx::Relu_5', 'layer1.conv.weight'], ['/layer1/conv/Conv_output_0'],
                         name='/layer1/conv/Conv', pads=[1, 1, 1, 1]),
        helper.make_node('Add', ['onnx::Relu_5', '/layer1/conv/Conv_output_0'], ['/layer1/Add_output_0'],
                         name='/layer1/Add'),
        helper.make_node('GlobalAveragePool', ['/layer1/Add_output_0'], ['/pool/GlobalAveragePool_output_0'],
                         name=POOL),
        helper.make_node('Concat', ['/Gather_output_0', '/Constant_1_output_0'], ['/Concat_output_0'],
                         name='/Concat', axis=0),
        const('/Constant_1', '/Constant_1_output_0', [-1]),
        helper.make_node('Reshape', ['/pool/GlobalAveragePool_output_0', '/Concat_output_0'],
                         ['/Reshape_output_0'], name='/Reshape'),
        helper.make_node('Gemm', ['/Reshape_output_0', 'fc.weight', 'fc.bias'], ['19'], name='/fc/Gemm',
                         transB=1),
    ]
    # Exporters emit nodes topologically; Concat before Constant_1 checks we sort anyway.
    graph = helper.make_graph(
        nodes, 'main_graph',
        [helper.make_tensor_value_info('input.1', TensorProto.FLOAT, ['batch_size', 3, 16, 16])],
        [helper.make_tensor_value_info('19', TensorProto.FLOAT, ['batch_size', 10])],
        initializer=[weight('conv1.weight', 8, 3, 3, 3), weight('conv1.bias', 8),
                     weight('layer1.conv.weight', 8, 8, 3, 3), weight('fc.weight', 10, 8),
                     weight('fc.bias', 10)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)], ir_version=8,
                              producer_name='pytorch')
    onnx.save(model, path)
    return path

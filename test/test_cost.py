"""Static node costs: FLOPs and bytes of known layers, computed by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autodice_ros.graph.cost import node_costs
from autodice_ros.graph.zoo import materialize


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[int],
           y_name: str, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])


def test_grouped_conv_flops_and_bytes_by_hand() -> None:
    # 1x8x10x10 input, 16 output channels in 4 groups (2 input channels each), 3x3, pad 1, bias.
    w = np.zeros((16, 2, 3, 3), np.float32)
    b = np.zeros(16, np.float32)
    conv = helper.make_node('Conv', ['x', 'w', 'b'], ['y'], name='conv', group=4, pads=[1, 1, 1, 1],
                            kernel_shape=[3, 3])
    (cost,) = node_costs(_model([conv], {'w': w, 'b': b}, [1, 8, 10, 10], 'y'))
    outputs = 16 * 10 * 10
    assert cost.id == 'conv' and cost.op == 'Conv'
    assert cost.flops == 2 * outputs * (2 * 3 * 3) + outputs      # MACs x2 + bias
    assert cost.param_bytes == (16 * 2 * 9 + 16) * 4
    assert cost.input_bytes == 8 * 10 * 10 * 4
    assert cost.activation_bytes == outputs * 4
    assert cost.output_shapes == ((1, 16, 10, 10),)


def test_depthwise_conv_counts_one_input_channel_per_output() -> None:
    w = np.zeros((32, 1, 3, 3), np.float32)
    conv = helper.make_node('Conv', ['x', 'w'], ['y'], group=32, strides=[2, 2], kernel_shape=[3, 3])
    (cost,) = node_costs(_model([conv], {'w': w}, [1, 32, 9, 9], 'y'))
    assert cost.output_shapes == ((1, 32, 4, 4),)
    assert cost.flops == 2 * 32 * 4 * 4 * 9
    assert cost.id == 'y'                   # unnamed node: its first output names it


def test_gemm_flops_with_transposed_weight_and_bias() -> None:
    w = np.zeros((1000, 4096), np.float32)                   # transB: (N, K)
    c = np.zeros(1000, np.float32)
    gemm = helper.make_node('Gemm', ['x', 'w', 'c'], ['y'], name='fc', transB=1)
    (cost,) = node_costs(_model([gemm], {'w': w, 'c': c}, [1, 4096], 'y'))
    assert cost.flops == 2 * 1000 * 4096 + 1000
    assert cost.param_bytes == (1000 * 4096 + 1000) * 4
    assert cost.bytes == cost.param_bytes + 4096 * 4 + 1000 * 4


def test_pool_relu_concat_and_constant_subgraph() -> None:
    scale = np.ones(8, np.float32)
    nodes = [
        helper.make_node('MaxPool', ['x'], ['p'], name='pool', kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node('Relu', ['p'], ['r'], name='relu'),
        helper.make_node('Concat', ['p', 'r'], ['c'], name='cat', axis=1),
        # a constant-only node: folded by ORT, its output becomes a parameter of its consumer
        helper.make_node('Unsqueeze', ['s', 'axes'], ['s3'], name='unsq'),
        helper.make_node('Mul', ['c', 's3'], ['y'], name='mul'),
    ]
    inits = {'s': np.concatenate([scale, scale]), 'axes': np.array([1, 2], np.int64)}
    costs = {c.id: c for c in node_costs(_model(nodes, inits, [1, 8, 4, 4], 'y'))}
    assert costs['pool'].flops == 8 * 2 * 2 * 4
    assert costs['relu'].flops == 8 * 2 * 2
    assert costs['cat'].flops == 0 and costs['cat'].input_bytes == 2 * 8 * 2 * 2 * 4
    assert costs['unsq'].constant and costs['unsq'].flops == 0 and costs['unsq'].param_bytes == 0
    assert not costs['mul'].constant
    assert costs['mul'].param_bytes == 16 * 4 and costs['mul'].flops == 16 * 2 * 2


def test_zoo_model_totals(tmp_path: Path) -> None:
    path = tmp_path / 'squeezenet.onnx'
    materialize('squeezenet').write(path)
    costs = node_costs(onnx.load(str(path)))
    assert len(costs) == 66 and not any(c.constant for c in costs)
    # SqueezeNet 1.0: about 0.36 G multiply-adds and 1.25 M parameters.
    assert 0.6e9 < sum(c.flops for c in costs) < 0.8e9
    assert 4.5e6 < sum(c.param_bytes for c in costs) < 5.5e6

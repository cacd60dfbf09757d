"""A small CNN with the layers within-layer splits find hardest: strided, dilated and SAME-padded
(even kernel: uneven pads) convs, a grouped and a depthwise conv (channel multiplier 2), a
ceil-mode (opset >= 10) and a count-include-pad pool, BN, a residual add, Gemm without transB,
MatMul."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(path: Path, opset: int = 13) -> Path:
    rng = np.random.default_rng(7)

    def init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init('wa', 8, 3, 3, 3), init('ba', 8), init('wb', 8, 4, 4, 4), init('bb', 8),
             init('wd', 16, 1, 3, 3), init('bd', 16),
             numpy_helper.from_array((rng.random(16) + 0.5).astype(np.float32), 'bn_s'),
             init('bn_b', 16), init('bn_m', 16),
             numpy_helper.from_array((rng.random(16) + 0.5).astype(np.float32), 'bn_v'),
             init('wr', 16, 8, 1, 1), init('wg', 16, 12), init('bg', 12), init('wm', 12, 10)]
    nodes = [
        helper.make_node('Conv', ['x', 'wa', 'ba'], ['a'], name='conv_a', pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node('Relu', ['a'], ['a_r'], name='relu_a'),
        helper.make_node('Conv', ['a_r', 'wb', 'bb'], ['b'], name='conv_b', group=2, kernel_shape=[4, 4],
                         auto_pad='SAME_UPPER'),
        helper.make_node('Relu', ['b'], ['b_r'], name='relu_b'),
        helper.make_node('Conv', ['b_r', 'wd', 'bd'], ['d'], name='dw', group=8, pads=[2, 2, 2, 2],
                         dilations=[2, 2]),
        helper.make_node('BatchNormalization', ['d', 'bn_s', 'bn_b', 'bn_m', 'bn_v'], ['d_bn'], name='bn'),
        helper.make_node('Conv', ['a_r', 'wr'], ['r'], name='conv_r'),
        helper.make_node('Add', ['d_bn', 'r'], ['s'], name='add'),
        helper.make_node('Relu', ['s'], ['s_r'], name='relu_s'),
        helper.make_node('MaxPool', ['s_r'], ['p'], name='pool', kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1], **({'ceil_mode': 1} if opset >= 10 else {})),
        helper.make_node('AveragePool', ['p'], ['q'], name='avg', kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node('GlobalAveragePool', ['q'], ['g'], name='gap'),
        helper.make_node('Flatten', ['g'], ['f'], name='flat'),
        helper.make_node('Gemm', ['f', 'wg', 'bg'], ['h'], name='fc'),
        helper.make_node('Relu', ['h'], ['h_r'], name='relu_h'),
        helper.make_node('MatMul', ['h_r', 'wm'], ['m'], name='mm'),
        helper.make_node('Softmax', ['m'], ['y'], name='prob', axis=1),
    ]
    graph = helper.make_graph(nodes, 'within', [helper.make_tensor_value_info('x', TensorProto.FLOAT,
                                                                              [1, 3, 23, 19])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path

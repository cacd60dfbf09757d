"""Reading models: ids, data inputs, topological order, shapes, constants, the lean reader/writer."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torchlike
from pipeline_helpers import autodice

from autodice_ros.errors import ModelError
from autodice_ros.graph import zoo
from autodice_ros.graph.model import (
    analyze,
    autodice_alias,
    data_inputs,
    load_model,
    node_id,
    strip_weights,
    topological_order,
)
from autodice_ros.graph.weights import read_lean, write_submodel


@pytest.fixture(scope='module')
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return torchlike.build(tmp_path_factory.mktemp('torchlike') / 'model.onnx')


def test_ids_follow_autodice() -> None:
    named = onnx.helper.make_node('Relu', ['a'], ['/layer1/relu/Relu_output_0'], name='/layer1/relu/Relu')
    unnamed = onnx.helper.make_node('Relu', ['a'], ['onnx::Relu_5'])
    assert node_id(named) == '/layer1/relu/Relu' and node_id(unnamed) == 'onnx::Relu_5'
    assert autodice_alias(named) == '_layer1_relu_Relu_output_0'


def test_ir3_weights_listed_as_inputs_are_not_data_inputs() -> None:
    light = onnx.load(str(zoo.light_path('zfnet512')))
    assert len(light.graph.input) > 10
    assert [v.name for v in data_inputs(light)][0] == 'gpu_0/data_0'


def test_torch_style_graph(torch_model: Path) -> None:
    graph = analyze(load_model(torch_model), torch_model)
    # Unsorted on disk (Concat before the Constant it reads): sorted here.
    assert graph.ids.index('/Constant_1') < graph.ids.index('/Concat')
    assert graph.inputs == ['input.1'] and graph.outputs == ['19']
    assert graph.types['input.1'].shape == (1, 3, 16, 16)           # batch fixed at 1
    assert graph.static_shape('/Reshape_output_0') == (1, 8)        # through the Shape chain
    assert graph.static_shape('19') == (1, 10)
    constant = {graph.ids[i] for i, c in enumerate(graph.constant) if c}
    assert constant == {'/Shape', '/Constant', '/Gather', '/Constant_1', '/Concat'}
    assert graph.resolve('_layer1_conv_Conv_output_0') == graph.resolve('/layer1/conv/Conv')
    assert graph.resolve('/layer1/conv/Conv_output_0') == graph.resolve('/layer1/conv/Conv')
    assert graph.resolve('onnx::Relu_5') is not None and graph.resolve('relu') is None


def test_topological_order_reports_a_missing_tensor() -> None:
    graph = onnx.helper.make_graph([onnx.helper.make_node('Relu', ['ghost'], ['y'], name='r')], 'g', [],
                                   [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="g.onnx: node 'r' reads tensor 'ghost' that no node"):
        topological_order(graph, 'g.onnx')


def test_lean_read_keeps_the_graph_and_drops_only_big_values(zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model('resnet50')
    lean = read_lean(path)
    full = load_model(path)
    assert lean.model == strip_weights(full)
    assert set(lean.spans) == {t.name for t in full.graph.initializer}
    assert lean.model.ByteSize() < path.stat().st_size / 100


def test_lean_write_of_everything_reproduces_the_model(tmp_path: Path,
                                                       zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model('densenet121')
    lean = read_lean(path)
    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(lean.model)
    del graph_only.graph.initializer[:]
    names = [t.name for t in lean.model.graph.initializer]
    written = write_submodel(tmp_path / 'copy.onnx', graph_only, lean, names)
    assert load_model(written.path) == load_model(path)


def test_nodes_lists_topological_order_with_costs(torch_model: Path) -> None:
    result = autodice('nodes', str(torch_model), '--json')
    rows = json.loads(result.stdout)
    assert [r['index'] for r in rows] == list(range(12))
    conv = next(r for r in rows if r['id'] == '/layer1/conv/Conv')
    assert conv['op'] == 'Conv' and conv['output_shapes'] == [[1, 8, 16, 16]]
    assert conv['flops'] == 2 * 8 * 16 * 16 * 8 * 9 and conv['param_bytes'] == 8 * 8 * 9 * 4
    assert conv['activation_bytes'] == 8 * 16 * 16 * 4
    assert next(r for r in rows if r['id'] == '/Shape')['constant'] is True
    table = autodice('nodes', str(torch_model))
    assert '/layer1/conv/Conv' in table.stdout and '(const)' in table.stdout


def test_a_name_used_twice_gives_the_later_node_its_output_as_id() -> None:
    make = onnx.helper
    graph = make.make_graph(
        [make.make_node('Relu', ['x'], ['a'], name='relu'),
         make.make_node('Relu', ['a'], ['b'], name='relu')],
        'g', [make.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1, 2])],
        [make.make_tensor_value_info('b', onnx.TensorProto.FLOAT, [1, 2])])
    model = make.make_model(graph, opset_imports=[make.make_opsetid('', 17)])
    analysed = analyze(model)
    assert analysed.ids == ['relu', 'b']
    assert analysed.resolve('relu') == 0 and analysed.resolve('b') == 1


def test_weights_in_float_data_are_copied_and_checked(tmp_path: Path) -> None:
    """Not every exporter writes raw_data: typed value fields go through the same byte copy."""
    import numpy as np

    from autodice_ros.mapping import mapping_from_cuts
    from autodice_ros.split.bundle import open_model, write_split
    from autodice_ros.verify import verify_bundle

    make = onnx.helper
    values = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    weight = make.make_tensor('w', onnx.TensorProto.FLOAT, [64, 64], values.ravel().tolist())
    assert not weight.raw_data and len(weight.float_data) == 64 * 64
    graph = make.make_graph(
        [make.make_node('MatMul', ['x', 'w'], ['h'], name='mm1'),
         make.make_node('Relu', ['h'], ['r'], name='relu'),
         make.make_node('MatMul', ['r', 'w'], ['y'], name='mm2')],
        'g', [make.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1, 64])],
        [make.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1, 64])], initializer=[weight])
    path = tmp_path / 'm.onnx'
    onnx.save(make.make_model(graph, opset_imports=[make.make_opsetid('', 17)], ir_version=9), path)
    lean, analysed = open_model(path)
    assert lean.stripped == {'w'} and not lean.raw
    bundle = write_split(lean, analysed, mapping_from_cuts(['relu'], analysed), tmp_path / 'b')
    for part in bundle.manifest.partitions:         # the weight is shared: each part has its copy
        assert [t.name for t in onnx.load(str(bundle.root / part.file)).graph.initializer] == ['w']
    assert verify_bundle(bundle.root).ok

"""Sessions load weights once, straight from the file (lean), and compute what a plain load does."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autodice_ros.inference import create_session, lean_model_bytes, run_session


def test_lean_session_reads_weights_from_the_file_and_matches_a_plain_one(
        zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('squeezenet')
    data = lean_model_bytes(model)
    assert data is not None and len(data) < model.stat().st_size / 20   # graph only, no weights
    lean, _ = create_session(model)
    plain, _ = create_session(model, lean=False)
    feed = {i.name: np.random.default_rng(0).random(i.shape).astype(np.float32) for i in plain.get_inputs()}
    for name, value in run_session(plain, feed).items():
        assert np.max(np.abs(run_session(lean, feed)[name] - value)) <= 1e-5


def test_weights_in_typed_fields_or_external_files_load_the_plain_way(tmp_path: Path) -> None:
    weight = np.arange(4096, dtype=np.float32).reshape(64, 64)
    typed = helper.make_tensor('w', TensorProto.FLOAT, weight.shape, weight.ravel().tolist())   # float_data
    graph = helper.make_graph([helper.make_node('MatMul', ['x', 'w'], ['y'])], 'g',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 64])], [typed])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.save(model, tmp_path / 'typed.onnx')
    assert lean_model_bytes(tmp_path / 'typed.onnx') is None
    onnx.save(model, tmp_path / 'ext.onnx', save_as_external_data=True, size_threshold=0)
    assert lean_model_bytes(tmp_path / 'ext.onnx') is None
    x = np.ones((1, 64), np.float32)
    for name in ('typed.onnx', 'ext.onnx'):
        session, _ = create_session(tmp_path / name)
        assert np.allclose(run_session(session, {'x': x})['y'], x @ weight)


def test_outputs_written_into_given_arrays_match_and_a_wrong_shape_is_refused(
        zoo_model: Callable[[str], Path]) -> None:
    # what a stage does with a borrowed shared-memory slot: ONNX Runtime writes the outputs there
    session, _ = create_session(zoo_model('squeezenet'))
    x = np.random.default_rng(1).random(session.get_inputs()[0].shape).astype(np.float32)
    x.flags.writeable = False                   # inputs arrive as read-only views of a slot
    feed = {session.get_inputs()[0].name: x}
    plain = run_session(session, feed)
    into = {name: np.full(value.shape, np.nan, value.dtype) for name, value in plain.items()}
    got = run_session(session, feed, into=into)
    for name, value in plain.items():
        assert got[name] is into[name] and np.array_equal(into[name], value)
    name, value = next(iter(plain.items()))
    with pytest.raises(Exception, match=name):   # ONNX Runtime's own (untyped) error
        run_session(session, feed, into={name: np.empty((2, *value.shape[1:]), value.dtype)})
    with pytest.raises(ValueError, match=name):
        run_session(session, feed, into={})

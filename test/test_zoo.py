"""The zoo: nine Model Zoo CNNs with seeded weights that run in ONNX Runtime with sane outputs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pipeline_helpers import autodice

from autodice_ros.graph import zoo
from autodice_ros.graph.model import data_inputs
from autodice_ros.graph.weights import read_lean


def test_list_names_all_nine() -> None:
    result = autodice('zoo', '--list')
    assert result.stdout.split() == list(zoo.NAMES)
    assert len(zoo.NAMES) == 9


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / 'a.onnx', tmp_path / 'b.onnx', tmp_path / 'c.onnx']
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        autodice('zoo', 'squeezenet', '-o', str(path), '--seed', str(seed))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]     # no temp file left


def test_unknown_name_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = autodice('zoo', 'lenet', '-o', str(tmp_path / 'x.onnx'), check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and 'lenet' in result.stderr
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.parametrize('name', zoo.NAMES)
def test_model_is_valid_runs_and_has_a_live_softmax(name: str, zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model(name)
    light = onnx.load(zoo.light_path(name))
    model = read_lean(path).model                   # the graph; weights stay on disk
    assert model.ir_version == light.ir_version
    assert list(model.opset_import) == list(light.opset_import)
    assert not [n for n in model.graph.node if n.op_type == 'ConstantOfShape']
    inputs = data_inputs(model)
    assert len(inputs) == 1 and inputs[0].type.tensor_type.shape.dim[1].dim_value == 3
    onnx.checker.check_model(str(path), full_check=True)

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == [inputs[0].name]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    y = session.run(None, {inputs[0].name: x})[0].reshape(-1)
    assert y.size == 1000 and np.isfinite(y).all()
    ends_in_softmax = model.graph.node[-1].op_type == 'Softmax'
    probs = y if ends_in_softmax else np.exp(y - y.max()) / np.exp(y - y.max()).sum()
    assert abs(probs.sum() - 1) < 1e-4
    assert 1.2e-3 < probs.max() < 0.99          # neither uniform nor one-hot

"""Bad input to ``autodice split`` / ``nodes``: one line naming the file and the culprit, exit 2,
and no bundle (or temp dir) left behind."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from pipeline_helpers import autodice

cli = partial(autodice, check=False)


def fails_cleanly(result: subprocess.CompletedProcess[str], out: Path, *expected: str) -> None:
    """Exit 2, one stderr line holding every ``expected`` text, nothing written next to ``out``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}')]


def tiny_model(path: Path, opset: int) -> Path:
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'], name='relu')], 'tiny',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)], ir_version=10), path)
    return path


@pytest.fixture
def squeezenet(zoo_model: Callable[[str], Path]) -> Path:
    return zoo_model('squeezenet')


def test_not_an_onnx_file(tmp_path: Path) -> None:
    model = tmp_path / 'notes.onnx'
    model.write_text('these are my notes, not a network\n' * 20)
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(model), '--boards', '1', '-o', str(out)), out, str(model),
                  'not an ONNX model')
    fails_cleanly(cli('nodes', str(model)), out, str(model), 'not an ONNX model')


def test_truncated_file(tmp_path: Path, squeezenet: Path) -> None:
    model = tmp_path / 'cut.onnx'
    model.write_bytes(squeezenet.read_bytes()[: squeezenet.stat().st_size // 2])
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(model), '--boards', '2', '-o', str(out)), out, str(model), 'truncated')


@pytest.mark.parametrize('opset', [5, 40])
def test_unsupported_opset(tmp_path: Path, opset: int) -> None:
    model = tiny_model(tmp_path / 'old.onnx', opset)
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(model), '--boards', '1', '-o', str(out)), out, str(model),
                  f'opset_import ai.onnx version {opset} is not supported')


@pytest.mark.parametrize(('mapping', 'culprit'), [
    ({'nx01_cpu0': ['n0', 'n1', 'conv_typo']}, "node 'conv_typo' is not in"),
    ({'nx01_cpu0': ['n0', 'n1'], 'nx02_cpu0': ['n1']}, "node 'n1' is mapped twice"),
    ({'nx01_cpu0': ['n0', 'n1']}, "node 'n2' is not mapped"),
    ({'nx01': ['n0']}, "key 'nx01' has no resource part"),
])
def test_bad_mapping(tmp_path: Path, squeezenet: Path, mapping: dict[str, list[str]], culprit: str) -> None:
    path = tmp_path / 'mapping.json'
    path.write_text(json.dumps(mapping))
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(squeezenet), '--mapping', str(path), '-o', str(out)), out,
                  str(path), culprit)


def test_unknown_cut_node(tmp_path: Path, squeezenet: Path) -> None:
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(squeezenet), '--cuts', 'n3,fire9', '-o', str(out)), out,
                  "cut node 'fire9' is not in", str(squeezenet))


def test_unwritable_output_dir(tmp_path: Path, squeezenet: Path) -> None:
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a directory')
    out = blocker / 'bundle'
    fails_cleanly(cli('split', str(squeezenet), '--boards', '1', '-o', str(out)), out,
                  str(out), 'cannot write the bundle')
    assert blocker.read_text() == 'not a directory'


def test_labels_that_do_not_fit_are_refused(tmp_path: Path, squeezenet: Path) -> None:
    labels = tmp_path / 'labels.txt'
    labels.write_text('cat\ndog\n')             # 2 labels for 1000 classes
    out = tmp_path / 'bundle'
    fails_cleanly(cli('split', str(squeezenet), '--boards', '2', '-o', str(out), '--labels', str(labels)),
                  out, str(labels), '2 labels, but the model has 1000 classes')


def test_a_failure_while_writing_leaves_no_partial_bundle(tmp_path: Path, squeezenet: Path) -> None:
    from autodice_ros.errors import ModelError
    from autodice_ros.mapping import mapping_from_cuts
    from autodice_ros.split.bundle import open_model, write_split

    model = tmp_path / 'model.onnx'
    model.write_bytes(squeezenet.read_bytes())
    lean, graph = open_model(model)
    model.unlink()                              # the weights vanish after the graph was read
    out = tmp_path / 'bundle'
    with pytest.raises(ModelError, match=f'{model}: cannot read'):
        write_split(lean, graph, mapping_from_cuts(['n30'], graph), out)
    assert list(tmp_path.iterdir()) == []

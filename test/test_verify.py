"""``autodice verify``: passes a faithful bundle, fails a wrong one, refuses a tampered one."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pipeline_helpers import autodice

from autodice_ros.manifest import MANIFEST_NAME, sha256_file

cli = partial(autodice, check=False)


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[[str], Path]) -> Path:
    out = tmp_path_factory.mktemp('verify') / 'bundle'
    result = cli('split', str(zoo_model('squeezenet')), '--cuts', 'n20,n45', '-o', str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_faithful_bundle_passes_with_per_output_errors(bundle: Path) -> None:
    result = cli('verify', str(bundle), '--inputs', '2')
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if 'softmaxout_1' in line)
    assert 'max abs error' in line and 'relative' in line and line.endswith('ok')
    assert '2 seeded input(s)' in result.stdout


def test_a_wrong_sub_model_fails_with_exit_1(bundle: Path, tmp_path: Path) -> None:
    wrong = tmp_path / 'wrong'
    shutil.copytree(bundle, wrong)
    manifest = json.loads((wrong / MANIFEST_NAME).read_text())
    part = manifest['partitions'][1]
    model = onnx.load(str(wrong / part['file']))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    values = numpy_helper.to_array(weight).copy()
    values[0] *= 1.5                                    # one output channel off by 50 %
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(wrong / part['file']))
    part['sha256'] = sha256_file(wrong / part['file'])  # consistent hashes: only the maths is wrong
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = cli('verify', str(wrong), '--inputs', '1')
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'FAIL' in result.stdout


def test_tampered_sub_model_is_refused_naming_the_file(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / 'tampered'
    shutil.copytree(bundle, tampered)
    target = next(tampered.glob('stage1.onnx'))
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    result = cli('verify', str(tampered))
    assert result.returncode == 2
    assert str(target) in result.stderr and 'sha256' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_moved_model_needs_the_same_bytes(bundle: Path, tmp_path: Path,
                                          zoo_model: Callable[[str], Path]) -> None:
    moved = tmp_path / 'moved.onnx'
    shutil.copyfile(zoo_model('squeezenet'), moved)
    assert cli('verify', str(bundle), '--model', str(moved), '--inputs', '1').returncode == 0
    other = cli('verify', str(bundle), '--model', str(zoo_model('inception_v1')))
    assert other.returncode == 2 and 'sha256 differs' in other.stderr


def test_random_inputs_are_seeded() -> None:
    from autodice_ros.manifest import TensorEntry
    from autodice_ros.verify import random_inputs

    entries = [TensorEntry('x', 'float32', (1, 3, 4, 4), 'input'), TensorEntry('n', 'int64', (2,), 'input')]
    a, b, c = random_inputs(entries, 1), random_inputs(entries, 1), random_inputs(entries, 2)
    assert np.array_equal(a['x'], b['x']) and not np.array_equal(a['x'], c['x'])
    assert a['x'].dtype == np.float32 and a['n'].dtype == np.int64

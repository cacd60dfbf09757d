"""Profiling under real ONNX Runtime: the trace maps back to node ids, the roofline is fitted."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autodice_ros.cli import main as autodice
from autodice_ros.errors import MappingError
from autodice_ros.graph.model import analyze
from autodice_ros.partitioner import plan
from autodice_ros.profile import (
    ProfileError,
    fused_flags,
    fusion_roots,
    load_profile,
    profile_model,
    save_profile,
)


@pytest.fixture
def squeezenet(zoo_model: Callable[[str], Path]) -> Path:
    return zoo_model('squeezenet')


def _unnamed_residual(path: Path) -> Path:
    """A residual block whose nodes have no names (their ids are their first outputs)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, n)
             for n in ('w', 'w2')]
    nodes = [helper.make_node('Conv', ['x', 'w'], ['a'], pads=[1, 1, 1, 1]),
             helper.make_node('Relu', ['a'], ['b']),
             helper.make_node('Conv', ['b', 'w2'], ['c'], pads=[1, 1, 1, 1]),
             helper.make_node('Add', ['b', 'c'], ['d']),
             helper.make_node('Relu', ['d'], ['y'])]
    graph = helper.make_graph(nodes, 'res',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 16, 32, 32])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 16, 32, 32])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)]), str(path))
    return path


def test_fusion_follows_onnx_runtime_rules(tmp_path: Path) -> None:
    graph = analyze(onnx.load(str(_unnamed_residual(tmp_path / 'res.onnx'))))
    assert graph.ids == ['a', 'b', 'c', 'd', 'y']
    fused = fused_flags(graph)
    # relu b fuses into conv a; the add fuses into conv c (its other input, b, feeds two nodes).
    assert fused == [False, True, False, True, True]
    assert [graph.ids[r] for r in fusion_roots(graph, fused)] == ['a', 'a', 'c', 'c', 'c']


def test_unnamed_nodes_map_back_to_their_ids(tmp_path: Path) -> None:
    profile = profile_model(_unnamed_residual(tmp_path / 'res.onnx'), runs=5, warmup=2)
    times = {n.id: n for n in profile.nodes}
    assert set(times) == {'a', 'b', 'c', 'd', 'y'}
    assert times['a'].seconds > 0 and times['c'].seconds > 0          # the convolutions' kernels
    assert times['b'].seconds == 0 and times['b'].root == 'a'         # fused: time is in its root
    assert times['y'].root == 'c'


def test_squeezenet_profile_and_calibration(squeezenet: Path, tmp_path: Path) -> None:
    profile = profile_model(squeezenet, runs=5, warmup=2)
    graph = analyze(onnx.load(str(squeezenet), load_external_data=False))
    assert [n.id for n in profile.nodes] == [graph.ids[p] for p in graph.compute_nodes()]
    total = sum(n.seconds for n in profile.nodes)
    assert 0.8 * profile.run_s < total <= 1.05 * profile.run_s          # nodes add up to the run
    convs = [n for n in profile.nodes if n.op == 'Conv']
    assert all(n.seconds > 0 for n in convs)
    cal = profile.calibration
    assert 1e9 < cal.flops_per_s < 1e13 and 1e8 < cal.bytes_per_s < 1e12
    assert 0.75 < sum(n.predicted_s for n in profile.nodes) / total < 1.33  # in-sample fit
    assert profile.weight_bytes == pytest.approx(4.9e6, rel=0.05)
    assert profile.session_rss_bytes > profile.weight_bytes
    assert profile.activation_peak_bytes > 0
    save_profile(profile, tmp_path / 'p.json')
    again = load_profile(tmp_path / 'p.json')
    assert again.calibration == cal and again.nodes == profile.nodes
    measured = plan(graph, 2, profile=again, cost='measured')
    assert measured.cost_source.startswith('measured')
    assert sum(s.compute_s for s in measured.stages) == pytest.approx(total)


def test_measured_cost_needs_a_profile_of_this_model(tmp_path: Path) -> None:
    res = _unnamed_residual(tmp_path / 'res.onnx')
    profile = profile_model(res, runs=3, warmup=1)
    other = analyze(onnx.load(str(res)))
    other.ids[0] = 'renamed'          # a different model: a node the profile never saw
    with pytest.raises(MappingError, match="no time for node 'renamed'"):
        plan(other, 2, profile=profile, cost='measured')


def test_bad_profile_files(tmp_path: Path) -> None:
    (tmp_path / 'old.json').write_text(json.dumps({'version': 0}))
    with pytest.raises(ProfileError, match='old.json: field "version" is 0'):
        load_profile(tmp_path / 'old.json')
    (tmp_path / 'junk.json').write_text('{')
    with pytest.raises(ProfileError, match='junk.json: not JSON'):
        load_profile(tmp_path / 'junk.json')
    with pytest.raises(ProfileError, match='missing.json: cannot read'):
        load_profile(tmp_path / 'missing.json')


def test_profile_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _unnamed_residual(tmp_path / 'res.onnx')
    assert autodice(['profile', str(res), '--runs', '3', '-o', str(tmp_path / 'p.json')]) == 0
    out = capsys.readouterr().out
    assert 'roofline:' in out and 'GFLOP/s' in out and 'p.json: profile written' in out
    assert load_profile(tmp_path / 'p.json').runs == 3
    assert autodice(['profile', str(tmp_path / 'nothing.onnx')]) == 2
    assert 'nothing.onnx' in capsys.readouterr().err

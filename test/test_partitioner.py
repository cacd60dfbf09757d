"""The partitioner: the DP is optimal, respects memory caps, and counts every crossing tensor."""
from __future__ import annotations

import itertools
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
from autodice_ros.mapping import load_mapping
from autodice_ros.partitioner import Chain, Tensor, chain_from_graph, plan, plan_mapping, solve
from autodice_ros.verify import verify_bundle

# -- an independent reference: stage costs computed the slow, obvious way ------------------------


def _crossing(chain: Chain, cut: int) -> list[Tensor]:
    return [t for t in chain.tensors if t.producer < cut <= t.last_use]


def _stage_time(chain: Chain, i: int, j: int, link: float | None) -> float:
    n = len(chain)
    side = [0.0 if c in (0, n) else sum(chain.per_tensor_s + chain.per_byte_s * t.nbytes
                                        for t in _crossing(chain, c)) for c in (i, j)]
    transfer = sum(t.nbytes for t in _crossing(chain, i)) / link if link and i > 0 else 0.0
    return chain.run_overhead_s + float(sum(chain.seconds[i:j])) + side[0] + side[1] + transfer


def _stage_memory(chain: Chain, i: int, j: int) -> float:
    held = sum(t.nbytes for t in _crossing(chain, i))
    peak = 0
    for step in range(i, j):
        live = sum(t.nbytes for t in chain.tensors
                   if i <= t.producer <= step and (t.output or max(t.last_use, t.producer) >= step))
        peak = max(peak, live)
    return float(sum(chain.param_bytes[i:j])) + held + peak


def _brute_force(chain: Chain, k: int, link: float | None, cap: float | None) -> float:
    best = np.inf
    for cuts in itertools.combinations(range(1, len(chain)), k - 1):
        bounds = [0, *cuts, len(chain)]
        stages = list(zip(bounds, bounds[1:], strict=False))
        if cap is not None and any(_stage_memory(chain, i, j) > cap for i, j in stages):
            continue
        best = min(best, max(_stage_time(chain, i, j, link) for i, j in stages))
    return float(best)


def _random_chain(rng: np.random.Generator, n: int) -> Chain:
    tensors = [Tensor('input', -1, 0, 600)]
    for p in range(n):
        # each node's output feeds the next one and, sometimes, a later one (a skip connection)
        last = p + 1 if p + 1 < n else -1
        if p + 2 < n and rng.random() < 0.4:
            last = int(rng.integers(p + 2, n))
        tensors.append(Tensor(f't{p}', p, last, int(rng.integers(100, 5000)), output=p == n - 1))
    return Chain(ids=[f'n{p}' for p in range(n)], seconds=rng.uniform(1, 10, n),
                 param_bytes=rng.integers(0, 20000, n), tensors=tensors, run_overhead_s=0.3,
                 per_tensor_s=0.05, per_byte_s=1e-4)


@pytest.mark.parametrize('seed', range(6))
def test_dp_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    chain = _random_chain(rng, int(rng.integers(6, 10)))
    for k in (1, 2, 3, 4):
        for link in (None, 2000.0):
            solution = solve(chain, k, link_rate=link)
            assert solution is not None
            assert solution.bottleneck_s == pytest.approx(_brute_force(chain, k, link, None))
            bounds = [*solution.starts, len(chain)]
            assert solution.starts[0] == 0 and len(solution.starts) == k
            assert max(_stage_time(chain, i, j, link) for i, j in zip(bounds, bounds[1:], strict=False)) \
                == pytest.approx(solution.bottleneck_s)


@pytest.mark.parametrize('seed', range(4))
def test_dp_respects_memory_cap_and_stays_optimal(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    chain = _random_chain(rng, 9)
    free = solve(chain, 3)
    smallest = solve(chain, 3, objective='memory')
    assert free is not None and smallest is not None
    assert smallest.bottleneck_s == pytest.approx(min(
        max(_stage_memory(chain, i, j) for i, j in zip([0, *c], [*c, 9], strict=False))
        for c in itertools.combinations(range(1, 9), 2)))
    for cap in np.linspace(smallest.bottleneck_s, smallest.bottleneck_s * 2, 4):
        capped = solve(chain, 3, mem_cap=cap)
        assert capped is not None
        bounds = [*capped.starts, 9]
        assert all(_stage_memory(chain, i, j) <= cap for i, j in zip(bounds, bounds[1:], strict=False))
        assert capped.bottleneck_s == pytest.approx(_brute_force(chain, 3, None, cap))
        assert capped.bottleneck_s >= free.bottleneck_s - 1e-12
    assert solve(chain, 3, mem_cap=smallest.bottleneck_s * 0.999) is None


# -- real graphs ----------------------------------------------------------------------------------


def _residual_model() -> onnx.ModelProto:
    """x -> conv a -> relu b -> conv c -> add(b, c) -> relu y: a residual block."""
    w = numpy_helper.from_array(np.full((4, 4, 3, 3), 0.1, np.float32), 'w')
    w2 = numpy_helper.from_array(np.full((4, 4, 3, 3), 0.1, np.float32), 'w2')
    nodes = [
        helper.make_node('Conv', ['x', 'w'], ['a'], name='conv_a', pads=[1, 1, 1, 1]),
        helper.make_node('Relu', ['a'], ['b'], name='relu_b'),
        helper.make_node('Conv', ['b', 'w2'], ['c'], name='conv_c', pads=[1, 1, 1, 1]),
        helper.make_node('Add', ['b', 'c'], ['d'], name='add'),
        helper.make_node('Relu', ['d'], ['y'], name='relu_y'),
    ]
    graph = helper.make_graph(nodes, 'res',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])


def test_residual_cut_crosses_both_branches() -> None:
    graph = analyze(_residual_model())
    chain = chain_from_graph(graph, [1.0] * len(graph.nodes))
    tensor_bytes = 4 * 8 * 8 * 4
    assert chain.ids == ['conv_a', 'relu_b', 'conv_c', 'add', 'relu_y']
    assert [t.name for t in chain.crossing(3)] == ['b', 'c']          # cut before the Add
    assert chain.crossing_bytes[3] == 2 * tensor_bytes
    assert [t.name for t in chain.crossing(2)] == ['b']                # b feeds conv_c and add
    assert chain.crossing_bytes[0] == tensor_bytes                     # the model input
    # Cut after the Add only y's input crosses; memory counts both live branches inside a stage.
    weights, activations = chain.memory_bytes(0, 4)
    assert weights == 2 * 4 * 4 * 9 * 4
    assert activations == tensor_bytes + 3 * tensor_bytes              # x held; b, c, d live at the Add


def test_infeasible_cap_names_the_cap_and_the_smallest_feasible_one() -> None:
    graph = analyze(_residual_model())
    with pytest.raises(MappingError) as failure:
        plan(graph, 2, mem_cap=1000)
    message = str(failure.value)
    assert '--mem-cap 1000 bytes' in message and 'smallest feasible cap is' in message
    smallest = float(message.split('smallest feasible cap is ')[1].split(' bytes')[0])
    fitting = plan(graph, 2, mem_cap=smallest)
    assert max(s.memory_bytes for s in fitting.stages) <= smallest
    with pytest.raises(MappingError, match='--boards 9'):
        plan(graph, 9)


def test_plan_mapping_is_a_valid_k_stage_pipeline() -> None:
    graph = analyze(_residual_model())
    mapping = plan_mapping(graph, 3)
    assert [p.board for p in mapping.partitions] == ['board0', 'board1', 'board2']
    assert [n for p in mapping.partitions for n in p.nodes] == graph.ids


@pytest.fixture
def squeezenet(zoo_model: Callable[[str], Path]) -> Path:
    return zoo_model('squeezenet')


def test_plan_cli_writes_both_formats_that_split_and_verify(squeezenet: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = autodice(['plan', str(squeezenet), '--boards', '3', '--link', '1Gbit', '--mem-cap', '64M',
                     '-o', str(tmp_path / 'plan.yaml')])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'bottleneck' in printed and 'board2_cpu0' in printed
    yaml_text = (tmp_path / 'plan.yaml').read_text()
    assert yaml_text.startswith('# autodice plan of') and '# stage1: predicted' in yaml_text
    autodice_json = json.loads((tmp_path / 'plan.json').read_text())
    assert list(autodice_json) == ['board0_cpu0', 'board1_cpu0', 'board2_cpu0']
    graph = analyze(onnx.load(str(squeezenet), load_external_data=False), squeezenet)
    from_yaml = load_mapping(tmp_path / 'plan.yaml', graph)
    from_json = load_mapping(tmp_path / 'plan.json', graph)
    assert [p.nodes for p in from_yaml.partitions] == [p.nodes for p in from_json.partitions]
    assert len(from_yaml.partitions) == 3
    assert autodice(['split', str(squeezenet), '--mapping', str(tmp_path / 'plan.yaml'),
                     '-o', str(tmp_path / 'bundle')]) == 0
    report = verify_bundle(tmp_path / 'bundle', inputs=1)
    assert report.ok, report


def test_plan_cli_rejects_a_bad_amount(squeezenet: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = autodice(['plan', str(squeezenet), '--boards', '2', '--mem-cap', 'lots',
                     '-o', str(tmp_path / 'p')])
    assert code == 2
    assert "--mem-cap 'lots'" in capsys.readouterr().err
    assert not (tmp_path / 'p.yaml').exists()

"""Mappings: AutoDiCE JSON, our YAML and --cuts into one validated Mapping."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torchlike

from autodice_ros.errors import MappingError
from autodice_ros.graph.model import ModelGraph, analyze, load_model
from autodice_ros.mapping import (
    CPU,
    CUDA,
    Mapping,
    load_mapping,
    mapping_from_cuts,
    parse_key,
    to_autodice,
    to_yaml,
)


@pytest.fixture(scope='module')
def torch_graph(tmp_path_factory: pytest.TempPathFactory) -> ModelGraph:
    path = torchlike.build(tmp_path_factory.mktemp('torchlike') / 'model.onnx')
    return analyze(load_model(path), path)


@pytest.fixture(scope='module')
def inception(zoo_model: Callable[[str], Path]) -> ModelGraph:
    path = zoo_model('inception_v1')
    return analyze(load_model(path), path)


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if path.suffix == '.json' else str(data))
    return path


def produced_before(mapping: Mapping, graph: ModelGraph) -> bool:
    """Every partition reads only tensors of earlier partitions (the partition graph is a DAG)."""
    where = mapping.assignment()
    order = {p.name: i for i, p in enumerate(mapping.partitions)}
    position = {graph.ids[i]: i for i in range(len(graph.nodes))}
    for part in mapping.partitions:
        for node_name in part.nodes:
            for tensor in graph.nodes[position[node_name]].input:
                producer = graph.producer.get(tensor)
                if producer is not None and not graph.constant[producer]:
                    if order[where[graph.ids[producer]]] > order[part.name]:
                        return False
    return True


def test_keys_name_board_cores_and_provider() -> None:
    spec = parse_key('nx01_cpu012', 'm.json')
    assert (spec.board, spec.threads, spec.cores, spec.provider) == ('nx01', 3, (0, 1, 2), CPU)
    gpu = parse_key('lenovo_gpu1', 'm.json')
    assert (gpu.board, gpu.provider) == ('lenovo', CUDA)
    assert parse_key('rpi_4b_cpu', 'm.json').board == 'rpi_4b'
    assert parse_key('rpi_4b_cpu', 'm.json').threads == 1


@pytest.mark.parametrize('key', ['nx01', 'nx01_', '_cpu0'])
def test_key_without_resource_names_the_key(key: str) -> None:
    with pytest.raises(MappingError, match=rf"m.json: key '{key}' has no resource part"):
        parse_key(key, 'm.json')


def test_autodice_json_listing_every_node_with_format_onnx_spelling(torch_graph: ModelGraph,
                                                                    tmp_path: Path) -> None:
    # AutoDiCE lists every node, constants included, by first output with '/' -> '_'.
    spell = [torch_graph.nodes[i].output[0].replace('/', '_') for i in range(len(torch_graph.nodes))]
    cut = torch_graph.ids.index(torchlike.CROSSING_CUT) + 1
    path = write(tmp_path / 'mapping.json', {'nx01_cpu01': spell[:cut], 'nx02_gpu0': spell[cut:]})
    mapping = load_mapping(path, torch_graph)
    assert [(p.name, p.board, p.threads, p.provider) for p in mapping.partitions] == [
        ('nx01_cpu01', 'nx01', 2, CPU), ('nx02_gpu0', 'nx02', 1, CUDA)]
    # Constant nodes are not placed: they follow their consumers.
    placed = {n for p in mapping.partitions for n in p.nodes}
    assert '/Shape' not in placed and '/Constant' not in placed
    assert placed == {torch_graph.ids[i] for i in torch_graph.compute_nodes()}
    assert mapping.partitions[0].nodes[-1] == torchlike.CROSSING_CUT


def test_yaml_ranges_defaults_and_round_trips(inception: ModelGraph, tmp_path: Path) -> None:
    compute = inception.compute_nodes()
    second, third = inception.ids[compute[40]], inception.ids[compute[90]]
    text = (f'partitions:\n'
            f'  - {{board: nx01, threads: 2, cores: [2, 3]}}\n'
            f'  - {{name: middle, board: nx02, provider: gpu, from: {second}}}\n'
            f'  - {{board: nx03, from: {third}}}\n')
    mapping = load_mapping(write(tmp_path / 'm.yaml', text), inception)
    parts = mapping.partitions
    assert [(p.name, p.board, p.provider, p.threads, p.cores) for p in parts] == [
        ('nx01', 'nx01', CPU, 2, (2, 3)), ('middle', 'nx02', CUDA, 1, ()), ('nx03', 'nx03', CPU, 1, ())]
    assert parts[1].nodes[0] == second and parts[2].nodes[0] == third
    assert sum(len(p.nodes) for p in parts) == len(compute)
    again = load_mapping(write(tmp_path / 'again.yaml', to_yaml(mapping)), inception)
    assert again.partitions == mapping.partitions
    autodice = load_mapping(write(tmp_path / 'again.json', to_autodice(mapping)), inception)
    assert [p.nodes for p in autodice.partitions] == [p.nodes for p in parts]


def test_back_and_forth_is_cut_into_an_acyclic_chain_of_pieces(inception: ModelGraph,
                                                               tmp_path: Path) -> None:
    compute = inception.compute_nodes()
    data = {'a_cpu0': [inception.ids[p] for p in compute[0::2]],
            'b_cpu1': [inception.ids[p] for p in compute[1::2]]}
    mapping = load_mapping(write(tmp_path / 'alt.json', data), inception)
    names = [p.name for p in mapping.partitions]
    assert names[:4] == ['a_cpu0', 'b_cpu1', 'a_cpu0_1', 'b_cpu1_1']
    assert len(names) > 4 and len(set(names)) == len(names)
    assert {p.board for p in mapping.partitions} == {'a', 'b'}
    assert produced_before(mapping, inception)
    joined = to_autodice(mapping)                           # the pieces join again on output
    assert {k: set(v) for k, v in joined.items()} == {k: set(v) for k, v in data.items()}


def test_parallel_branches_crossing_both_ways_are_split(inception: ModelGraph, tmp_path: Path) -> None:
    # Inception block 3a: the 1x1 branch on board b, everything else on board a. b reads a's
    # output and a's concat reads b's: a alone would be a cycle a -> b -> a.
    branch = [i for i in inception.compute_nodes()
              if inception.nodes[i].output[0] in ('r10', 'r11')]    # 3a/1x1 conv + relu
    assert len(branch) == 2
    data = {'a_cpu0': [inception.ids[i] for i in inception.compute_nodes() if i not in branch],
            'b_cpu0': [inception.ids[i] for i in branch]}
    mapping = load_mapping(write(tmp_path / 'cross.json', data), inception)
    assert [p.name for p in mapping.partitions] == ['a_cpu0', 'b_cpu0', 'a_cpu0_1']
    assert produced_before(mapping, inception)


def test_cuts_make_stages_in_topological_order(inception: ModelGraph) -> None:
    ids = [inception.ids[p] for p in inception.compute_nodes()]
    mapping = mapping_from_cuts([ids[100], ids[30]], inception)
    assert [(p.name, p.board) for p in mapping.partitions] == [
        ('stage0', 'board0'), ('stage1', 'board1'), ('stage2', 'board2')]
    assert mapping.partitions[0].nodes[-1] == ids[30] and mapping.partitions[1].nodes[-1] == ids[100]
    assert len(mapping_from_cuts([], inception).partitions) == 1


@pytest.mark.parametrize(('data', 'message'), [
    ({'a_cpu0': ['n0', 'nope']}, r"m.json: key 'a_cpu0': node 'nope' is not in .*inception_v1.onnx"),
    ({'a_cpu0': ['n0', 'n0']}, r"m.json: node 'n0' is mapped twice in 'a_cpu0'"),
    ({'a_cpu0': ['n0'], 'b_cpu0': ['n0']}, r"m.json: node 'n0' is mapped twice \(in 'a_cpu0' and 'b_cpu0'\)"),
    ({'a_cpu0': ['n0']}, r"m.json: node 'n1' is not mapped \(and \d+ more\)"),
    ({'a_cpu0': []}, r"key 'a_cpu0': partition 'a_cpu0' maps no nodes"),
    ({'a_tpu0': ['n0']}, r"key 'a_tpu0': resource 'tpu0' is not"),
    ({'a_cpu0': 'n0'}, r"key 'a_cpu0': expected a list of node ids"),
    ({'conv2_1': ['lop', [0, 48], ['a_cpu0']], 'a_cpu0': ['n0']},
     r"within-layer entry 'conv2_1': node 'conv2_1' is not in"),
    ({'n3': ['lop', [0, 32], ['a_cpu0', 'x_cpu0']], 'a_cpu0': ['n0']},
     r"within-layer entry 'n3': field 'partitions': 'x_cpu0' is not a partition"),
    ({'n3': ['lop', [32], ['a_cpu0']], 'a_cpu0': ['n0'], 'b_cpu0': ['n3']},
     r"key 'b_cpu0': node 'n3' belongs to within-layer entry 'n3', which partitions a_cpu0 share"),
])
def test_bad_json_mappings_name_file_and_culprit(inception: ModelGraph, tmp_path: Path,
                                                 data: object, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        load_mapping(write(tmp_path / 'm.json', data), inception)


@pytest.mark.parametrize(('text', 'message'), [
    ('partitions:\n  - {board: a, nodez: [n0]}\n', r"m.yaml: partitions\[0\]: unknown field\(s\) nodez"),
    ('partitions:\n  - {nodes: [n0]}\n', r"partitions\[0\]: field 'board' is missing"),
    ('partitions:\n  - {board: a, provider: tpu}\n', r"partitions\[0\]: field 'provider' is 'tpu'"),
    ('partitions:\n  - {board: a, to: n5}\n  - {board: b}\n  - {board: c}\n',
     r"partitions\[1\]: field 'to' is missing"),
    ('partitions: [\n', r'm.yaml: not valid YAML \(line'),
])
def test_bad_yaml_mappings_name_the_field(inception: ModelGraph, tmp_path: Path, text: str,
                                          message: str) -> None:
    with pytest.raises(MappingError, match=message):
        load_mapping(write(tmp_path / 'm.yaml', text), inception)


def test_unnamed_yaml_partitions_on_one_board_are_numbered(inception: ModelGraph, tmp_path: Path) -> None:
    third = inception.ids[inception.compute_nodes()[50]]
    text = f'partitions:\n  - {{board: a}}\n  - {{board: b, from: {third}, to: {third}}}\n  - {{board: a}}\n'
    mapping = load_mapping(write(tmp_path / 'm.yml', text), inception)
    assert [p.name for p in mapping.partitions] == ['a_0', 'b', 'a_1']
    assert mapping.partitions[1].nodes == (third,)

"""The plan: which nodes a board starts, with what parameters, topics and transport."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from autodice_ros.environment import PROFILE_VAR
from autodice_ros.errors import BundleError
from autodice_ros.manifest import (
    INPUT_TOPIC,
    Manifest,
    ModelInfo,
    Partition,
    Postprocess,
    Preprocess,
    TensorEntry,
    derive_edges,
    partition_topic,
    write_bundle,
)
from autodice_ros.plan import PlanOptions, make_plan, option_fields, options_from_strings


def three_stage_bundle(root: Path) -> Path:
    """x -> p0 (board a) -> p1 (board b) -> p2 (board b) -> y, p0 also feeds p2 (a skip link)."""
    def t(name: str, topic: str) -> TensorEntry:
        return TensorEntry(name, 'float32', (1, 4), topic)

    x = t('x', INPUT_TOPIC)
    h0, h1, y = (t('h0', partition_topic('p0')), t('h1', partition_topic('p1')),
                 t('y', partition_topic('p2')))
    files = {f'p{i}.onnx': f'model {i}'.encode() for i in range(3)}
    digest = {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}
    parts = (Partition('p0', 'a', 'p0.onnx', digest['p0.onnx'], (x,), (h0,)),
             Partition('p1', 'b', 'p1.onnx', digest['p1.onnx'], (h0,), (h1,)),
             Partition('p2', 'b', 'p2.onnx', digest['p2.onnx'], (h0, h1), (y,)))
    manifest = Manifest(ModelInfo('m', '/m.onnx', '0' * 64, 13, 8), (x,), (y,), parts,
                        Preprocess('x'), Postprocess('y'), edges=derive_edges((x,), parts, (y,)))
    write_bundle(root / 'bundle', manifest, files)
    return root / 'bundle'


def test_whole_pipeline_on_one_machine_uses_shared_memory_everywhere(tmp_path: Path) -> None:
    specs = make_plan(three_stage_bundle(tmp_path))
    assert [s.executable for s in specs] == ['image_source', 'camera_head', 'stage', 'stage', 'stage', 'tail']
    assert [s.name for s in specs][2:5] == ['p0', 'p1', 'p2']
    assert all(s.env[PROFILE_VAR].endswith('fastdds_board.xml') for s in specs)
    assert {s.namespace for s in specs} == {'/autodice'}
    stage = specs[3]
    assert stage.parameters['partition'] == 'p1'
    assert Path(str(stage.parameters['bundle'])).is_absolute()


def test_a_board_starts_only_its_nodes_all_on_the_network_profile(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    board_a = make_plan(bundle, PlanOptions(board='a'))
    assert [s.name for s in board_a] == ['image_source', 'camera_head', 'p0']
    board_b = make_plan(bundle, PlanOptions(board='b', source='none'))
    assert [s.name for s in board_b] == ['p1', 'p2', 'tail']
    # participants of different profiles never connect: a spread pipeline uses one profile
    assert {Path(s.env[PROFILE_VAR]).name for s in board_a + board_b} == {'fastdds_network.xml'}
    asynchronous = {s.name for s in board_a + board_b if 'RMW_FASTRTPS_PUBLICATION_MODE' in s.env}
    assert asynchronous == {'p0', 'p1', 'p2'}        # the nodes with a link to the other board


def test_unknown_board_and_options_are_errors_that_name_them(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    with pytest.raises(BundleError, match="'c'.*a, b"):
        make_plan(bundle, PlanOptions(board='c'))
    with pytest.raises(BundleError, match='colour'):
        options_from_strings({'colour': 'red'})
    with pytest.raises(BundleError, match='rate'):
        options_from_strings({'rate': 'fast'})


def test_launch_argument_strings_convert_to_the_same_options_as_flags() -> None:
    opts = options_from_strings({'board': 'b', 'rate': '2.5', 'head': 'false', 'count': '7'})
    assert opts == PlanOptions(board='b', rate=2.5, head=False, count=7)
    assert {name for name, *_ in option_fields()} >= {'board', 'source', 'rate', 'reliability'}


def test_ros_arguments_keep_strings_as_strings(tmp_path: Path) -> None:
    spec = make_plan(three_stage_bundle(tmp_path), PlanOptions(image_topic='/cam/image_raw'))[1]
    args = spec.ros_arguments()
    assert args[:5] == ['--ros-args', '-r', '__node:=camera_head', '-r', '__ns:=/autodice']
    assert any(a.startswith("bundle:='/") for a in args)
    assert 'qos.depth:=10' in args
    assert 'image:=/cam/image_raw' in args


def test_keystore_puts_every_node_in_its_enclave_with_security_enforced(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    keystore = tmp_path / 'keystore'
    with pytest.raises(BundleError, match='enclave /autodice/image_source'):
        make_plan(bundle, PlanOptions(keystore=str(keystore)))
    for name in ('image_source', 'camera_head', 'p0', 'p1', 'p2', 'tail'):
        (keystore / 'enclaves' / 'autodice' / name).mkdir(parents=True)
    specs = make_plan(bundle, PlanOptions(keystore=str(keystore)))
    for spec in specs:
        assert spec.enclave == f'/autodice/{spec.name}'
        assert spec.ros_arguments()[-2:] == ['--enclave', spec.enclave]
        assert spec.env['ROS_SECURITY_ENABLE'] == 'true' and spec.env['ROS_SECURITY_STRATEGY'] == 'Enforce'
        assert spec.env['ROS_SECURITY_KEYSTORE'] == str(keystore)


def test_qos_options_reach_every_link_and_the_camera_keeps_its_own_reliability(tmp_path: Path) -> None:
    options = PlanOptions(depth=1, lifespan=0.5, image_reliability='best_effort')
    specs = {s.name: s.parameters for s in make_plan(three_stage_bundle(tmp_path), options)}
    for name in ('camera_head', 'p0', 'p1', 'p2', 'tail'):
        assert specs[name]['qos.reliability'] == 'reliable' and specs[name]['qos.depth'] == 1
        assert specs[name]['qos.lifespan'] == 0.5
    assert specs['camera_head']['image_qos.reliability'] == 'best_effort'
    assert specs['image_source']['qos.reliability'] == 'best_effort'
    default = {s.name: s.parameters for s in make_plan(three_stage_bundle(tmp_path / 'd'))}
    assert default['camera_head']['image_qos.reliability'] == 'reliable'

"""The fast path in the plan: the ``fast_path`` switch, a board's stages in one process (``stages``)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import ros_node, split, synthetic_images, whole_model
from test_plan import three_stage_bundle

from autodice_ros import fastpath
from autodice_ros.driver import PipelineDriver
from autodice_ros.environment import PROFILE_VAR
from autodice_ros.manifest import load_bundle
from autodice_ros.plan import PlanOptions, make_plan, option_fields, options_from_strings
from autodice_ros.runner import Runner


def test_every_tensor_node_gets_the_fast_path_switch(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    on = {s.name: s.parameters.get('fast_path') for s in make_plan(bundle)}
    assert on == {'image_source': None, 'camera_head': True, 'p0': True, 'p1': True, 'p2': True, 'tail': True}
    off = make_plan(bundle, options_from_strings({'fast_path': 'false'}))
    assert {s.parameters.get('fast_path') for s in off if s.executable != 'image_source'} == {False}
    assert {'fast_path', 'in_process'} <= {name for name, *_ in option_fields()}


def test_receivers_of_one_board_of_several_start_on_tensor_lists_from_other_boards(tmp_path: Path) -> None:
    from autodice_ros.nodes.common import remote_inputs

    bundle = three_stage_bundle(tmp_path)
    here = {s.name: s.parameters.get('remote_boards') for s in make_plan(bundle)}
    assert here == {'image_source': None, 'camera_head': False, 'p0': False, 'p1': False, 'p2': False,
                    'tail': False}                  # every board on this machine: nothing is remote
    # the head knows too: with max_in_flight it hears from the tail, which may be on another board
    board_a = make_plan(bundle, PlanOptions(board='a', source='none', max_in_flight=2))
    assert {s.name: (s.parameters.get('remote_boards'), s.parameters.get('max_in_flight'))
            for s in board_a} == {'camera_head': (True, 2), 'p0': (True, None)}
    folded = make_plan(bundle, PlanOptions(board='a', source='none', max_in_flight=2, one_process=True))
    assert folded[0].parameters['max_in_flight'] == 2 and folded[0].parameters['camera_head'] is True
    board_b = make_plan(bundle, PlanOptions(board='b', source='none'))
    assert {s.name: s.parameters.get('remote_boards') for s in board_b} == {'p1': True, 'p2': True,
                                                                            'tail': True}
    stages_b = make_plan(bundle, PlanOptions(board='b', source='none', in_process=True))
    assert stages_b[0].parameters['remote_boards'] is True
    manifest = load_bundle(bundle).manifest
    p1, p2 = manifest.partition('p1'), manifest.partition('p2')
    assert remote_inputs(True, manifest, 'b', p2.input_topics()) == {p1.inputs[0].topic}   # p0's, from a
    assert remote_inputs(True, manifest, 'b', manifest.output_topics()) == set()          # tail next to p2
    assert remote_inputs(True, manifest, 'a', manifest.partition('p0').input_topics()) == set()  # the head's
    assert remote_inputs(False, manifest, 'b', p2.input_topics()) == set()


def test_in_process_runs_a_boards_stages_in_one_process(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    specs = make_plan(bundle, PlanOptions(in_process=True))     # no board: all of them, here
    assert [(s.executable, s.name) for s in specs] == [
        ('image_source', 'image_source'), ('camera_head', 'camera_head'), ('stages', 'stages'),
        ('tail', 'tail')]
    assert specs[2].parameters['partitions'] == 'p0,p1,p2'
    board_b = make_plan(bundle, PlanOptions(board='b', in_process=True, threads=2, source='none'))
    assert [s.name for s in board_b] == ['stages_b', 'tail']
    assert Path(board_b[0].env[PROFILE_VAR]).name == 'fastdds_network.xml'   # p1 reads from board a
    assert board_b[0].parameters['threads'] == 2
    assert "partitions:='p1,p2'" in board_b[0].ros_arguments()


def test_one_process_folds_the_camera_head_and_tail_into_the_stages_process(tmp_path: Path) -> None:
    bundle = three_stage_bundle(tmp_path)
    specs = make_plan(bundle, PlanOptions(one_process=True, image_topic='/cam/image_raw'))
    assert [(s.executable, s.name) for s in specs] == [('image_source', 'image_source'),
                                                       ('stages', 'stages')]
    stages = specs[1].parameters
    assert stages['camera_head'] is True and stages['tail'] is True and stages['partitions'] == 'p0,p1,p2'
    assert stages['image_qos.depth'] == stages['qos.depth']         # the head's own parameters
    assert ('image', '/cam/image_raw') in specs[1].remappings
    board_a = make_plan(bundle, PlanOptions(board='a', one_process=True, source='none'))
    assert [s.name for s in board_a] == ['stages_a']
    assert (board_a[0].parameters['camera_head'], board_a[0].parameters['tail']) == (True, False)
    assert board_a[0].env['RMW_FASTRTPS_PUBLICATION_MODE'] == 'ASYNCHRONOUS'   # p0 -> board b
    board_b = make_plan(bundle, PlanOptions(board='b', one_process=True, source='none'))
    assert [s.name for s in board_b] == ['stages_b']
    assert (board_b[0].parameters['camera_head'], board_b[0].parameters['tail']) == (False, True)


@pytest.mark.parametrize('option', ['in_process', 'one_process'])
def test_stages_in_one_process_equal_the_whole_model(option: str, tmp_path: Path,
                                                     zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('squeezenet')
    bundle = split(model, tmp_path / 'bundle', '--boards', '3')
    manifest = load_bundle(bundle).manifest
    assert len(manifest.partitions) == 3
    namespace = f'/fastpath_{option}'
    specs = make_plan(bundle, PlanOptions(source='none', namespace=namespace, **{option: True}))
    folded = option == 'one_process'
    assert [s.executable for s in specs] == (['stages'] if folded else ['camera_head', 'stages', 'tail'])
    images = synthetic_images(6)
    with ros_node('stages_driver') as node, Runner(specs) as runner:
        driver = PipelineDriver(node, manifest, namespace, record_inputs=True)
        driver.wait_connected()
        for image in images:
            driver.send(image)
            driver.spin_for(0.2)
        assert driver.wait_for(len(images), timeout=60.0), f'{len(driver.collected.outputs)} frames'
        names = {name for name, ns in node.get_node_names_and_namespaces() if ns == namespace}
        assert {'camera_head', 'tail', 'stage0', 'stage1', 'stage2'} <= names
        if not folded:   # only the last stage's output leaves the process (to the tail): its slots
            owned = fastpath.own_segments(pid=runner.pid('stages'))
            assert 0 < len(owned) <= 10 + 2
    got = driver.collected
    sent = [(i.header.stamp.sec, i.header.stamp.nanosec) for i in images]
    assert got.order == sent and not got.errors
    expected = whole_model(model, [got.inputs[k] for k in sent])
    for key, ref in zip(sent, expected, strict=True):
        for name, value in ref.items():
            assert np.max(np.abs(got.outputs[key].tensors[name] - value)) <= 1e-4, (key, name)

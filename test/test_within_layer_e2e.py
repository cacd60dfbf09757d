"""Within-layer bundles over real DDS: the same stage nodes, launch plan and manifest reader run
them, and the outputs equal the single node's, frame by frame."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import split
from test_overload import assert_equal_to_whole_model, in_send_order, run_burst
from test_pipeline_e2e import check_against_single_node

from autodice_ros.manifest import load_bundle
from autodice_ros.split.bundle import open_model


def test_lop_bundle_of_alexnet_grouped_conv2(tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('bvlc_alexnet')
    _, graph = open_model(model)
    mapping = tmp_path / 'mapping.json'
    mapping.write_text(json.dumps({'nx01_cpu0': [graph.ids[p] for p in graph.compute_nodes()],
                                   'nx02_cpu0': ['n4'],
                                   'n4': ['lop', [48, 65535], ['nx01_cpu0', 'nx02_cpu0']]}))
    bundle = split(model, tmp_path / 'bundle', '--mapping', str(mapping))
    manifest = load_bundle(bundle).manifest
    # conv2's pieces run on both boards; the sub-model after them starts with their Concat
    assert manifest.boards == ('nx01', 'nx02') and len(manifest.partitions) == 3
    check_against_single_node(model, bundle, '/e2e_lop', crossing=2)


def test_height_tiles_bundle_of_squeezenet(tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('squeezenet')
    mapping = tmp_path / 'mapping.yaml'
    mapping.write_text('partitions:\n  - {board: nx01}\n  - {board: nx02, nodes: []}\n'
                       'layer_splits:\n  - {node: n0, to: n9, mode: height, sizes: [20, 35], '
                       'partitions: [nx01, nx02]}\n')
    bundle = split(model, tmp_path / 'bundle', '--mapping', str(mapping))
    manifest = load_bundle(bundle).manifest
    # nx02 computes its band alone; nx01 its band, the Concat with nx02's, and the rest
    assert manifest.strategy == 'height' and set(manifest.boards) == {'nx01', 'nx02'}
    assert sorted(len(p.inputs) for p in manifest.partitions) == [1, 2]
    check_against_single_node(model, bundle, '/e2e_tiles', crossing=2)


def test_lop_bundle_under_a_fast_camera_with_frames_in_flight_limited(
        tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    """Every split layer joins one frame's pieces from both boards: with ``max_in_flight`` the
    head refuses what the pipeline cannot take, so no piece of an admitted frame is dropped on
    the way and every admitted frame comes out, equal to the whole model."""
    model = zoo_model('squeezenet')
    bundle = split(model, tmp_path / 'bundle', '--boards', '2', '--strategy', 'lop')
    assert load_bundle(bundle).manifest.strategy == 'lop'
    run = run_burst(bundle, '/e2e_lop_admit', burst=60, reliability='reliable', depth=10, max_in_flight=2)
    numbered = run.delta('camera_head', 'frames_out')
    assert run.delta('camera_head', 'drops.in_flight_limit') > 0
    assert len(run.outputs) == numbered >= 3
    assert all(run.delta(n, 'drops') == 0 for n in run.after if n != 'camera_head')
    assert in_send_order(run)
    assert_equal_to_whole_model(model, run)

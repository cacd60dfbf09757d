"""Within-layer bundles over real DDS: the same stage nodes, launch plan and manifest reader run
them, and the outputs equal the single node's, frame by frame."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import split
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

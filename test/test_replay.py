"""rosbag2 replay: bags written here (sqlite3, mcap) -> split and single-node bundles -> same results."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import autodice, split, synthetic_images

from autodice_ros.bags import BagWriter, read_messages

FRAMES = 20


def write_image_bag(path: Path, storage: str) -> list[tuple[int, int]]:
    images = synthetic_images(FRAMES, 120, 160)
    with BagWriter(path, storage) as bag:
        for i, image in enumerate(images):
            bag.write('/camera/image_raw', 1_000_000_000_000 + i * 100_000_000, image)
    return [(m.header.stamp.sec, m.header.stamp.nanosec) for m in images]


def outputs_by_stamp(bag: Path) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    from autodice_ros.codec import decode_list

    result = {}
    for _, _, msg in read_messages(bag, 'autodice_msgs/msg/TensorList'):
        frame = decode_list(msg)
        result[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = {
            k: np.array(v) for k, v in frame.tensors.items()}
    return result


@pytest.fixture(scope='module')
def bundles(tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[[str], Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('replay_bundles')
    model = zoo_model('squeezenet')
    return {'split': split(model, root / 'split', '--boards', '2'),
            'single': split(model, root / 'single', '--boards', '1')}


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_split_and_single_node_replays_match_frame_by_frame(storage: str, tmp_path: Path,
                                                           bundles: dict[str, Path]) -> None:
    stamps = write_image_bag(tmp_path / 'in', storage)
    outputs = {}
    for kind, bundle in bundles.items():
        out = tmp_path / f'out_{kind}'
        result = autodice('replay', str(bundle), '--bag', str(tmp_path / 'in'), '--out', str(out),
                          '--storage', storage, '--rate', '10')
        assert f'replayed {FRAMES} images: {FRAMES} results' in result.stdout
        assert 'in order' in result.stdout
        outputs[kind] = outputs_by_stamp(out)
        assert sorted(outputs[kind]) == sorted(stamps)
    for stamp in stamps:
        single, split_out = outputs['single'][stamp], outputs['split'][stamp]
        assert single.keys() == split_out.keys()
        for name in single:
            assert np.max(np.abs(single[name] - split_out[name])) <= 1e-4


def test_recorded_timing_and_errors(tmp_path: Path, bundles: dict[str, Path]) -> None:
    write_image_bag(tmp_path / 'in', 'sqlite3')
    result = autodice('replay', str(bundles['split']), '--bag', str(tmp_path / 'in'),
                      '--out', str(tmp_path / 'out'))
    assert f'{FRAMES} results' in result.stdout
    again = autodice('replay', str(bundles['split']), '--bag', str(tmp_path / 'in'),
                     '--out', str(tmp_path / 'out'), check=False)
    assert again.returncode == 2 and 'already exists' in again.stderr
    missing = autodice('replay', str(bundles['split']), '--bag', str(tmp_path / 'nope'),
                       '--out', str(tmp_path / 'out2'), check=False)
    assert missing.returncode == 2 and 'nope' in missing.stderr
    assert not (tmp_path / 'out2').exists()

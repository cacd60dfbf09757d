"""rosbag2 replay: bags written here (sqlite3, mcap) -> split and single-node bundles -> same results."""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import AUTODICE, autodice, ros_node, split, synthetic_images

from autodice_ros.bags import BagWriter, read_messages

FRAMES = 20


def write_image_bag(path: Path, storage: str, frames: int = FRAMES) -> list[tuple[int, int]]:
    images = synthetic_images(frames, 120, 160)
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


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_replay_stops_its_nodes_and_leaves_a_readable_bag(
        sig: signal.Signals, tmp_path: Path, bundles: dict[str, Path]) -> None:
    from autodice_ros.codec import TensorSubscriber, decode_list, qos_profile
    from autodice_ros.manifest import OUTPUT_TOPIC
    from autodice_ros.rosutil import spin_until

    write_image_bag(tmp_path / 'in', 'mcap', frames=300)          # 30 s at the recorded timing
    out = tmp_path / 'out'
    seen: list[Any] = []
    with ros_node('replay_watcher') as node:
        TensorSubscriber(node, f'/autodice/{OUTPUT_TOPIC}', qos_profile(), None,
                         lambda _t, f: seen.append(f.frame), lambda _t, e: None)
        proc = subprocess.Popen([AUTODICE, 'replay', str(bundles['split']), '--bag', str(tmp_path / 'in'),
                                 '--out', str(out), '--storage', 'mcap'],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert spin_until(node, lambda: len(seen) >= 3 or proc.poll() is not None, timeout=90.0)
        kids = Path(f'/proc/{proc.pid}/task/{proc.pid}/children').read_text().split()
        start = time.monotonic()
        proc.send_signal(sig)
        log, _ = proc.communicate(timeout=30)
    assert time.monotonic() - start < 5.0, log
    assert proc.returncode == 128 + sig, log
    assert kids and not [k for k in kids if Path(f'/proc/{k}').exists()], log
    assert (out / 'metadata.yaml').exists(), 'the output bag was not closed'
    frames = [decode_list(msg).frame for _, _, msg in read_messages(out, 'autodice_msgs/msg/TensorList')]
    assert frames and frames == sorted(frames), frames

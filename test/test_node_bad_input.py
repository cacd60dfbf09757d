"""Nodes drop bad messages with a warning naming topic and field, count them, and keep running."""
from __future__ import annotations

import array
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import DiagnosticsWatch, ros_node, split, synthetic_images

from autodice_ros.codec import TensorPublisher, TensorSubscriber, encode_list, qos_profile
from autodice_ros.manifest import IMAGE_TOPIC, INPUT_TOPIC, load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.rosutil import now_header, spin_until, wait_for_subscribers
from autodice_ros.runner import Runner, node_command

NS = '/bad_input'


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[[str], Path]) -> Path:
    return split(zoo_model('squeezenet'), tmp_path_factory.mktemp('bad') / 'bundle', '--boards', '2')


def stage_spec(bundle: Path, partition: str) -> Any:
    return next(s for s in make_plan(bundle, PlanOptions(namespace=NS))
                if s.parameters.get('partition') == partition)


def peak_rss_mib(runner: Runner) -> float:
    return max(runner.peak_rss().values()) / 2**20


def test_stage_drops_bad_tensor_lists_and_keeps_working(bundle: Path) -> None:
    manifest = load_bundle(bundle).manifest
    second = manifest.partitions[1]
    spec = stage_spec(bundle, second.name)
    assert len(second.input_topics()) == 1
    entry = second.inputs[0]
    rng = np.random.default_rng(0)
    good = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in second.inputs}
    first = good[entry.name]
    rest = {k: v for k, v in good.items() if k != entry.name}
    bad = {
        'wrong name': {'not_' + entry.name: first, **rest},
        'wrong shape': {entry.name: first.reshape(-1), **rest},
        'wrong dtype': {entry.name: first.astype(np.float64), **rest},
    }
    with ros_node('bad_tensor_driver') as node, Runner([spec]) as runner:
        # TensorList messages (corrupt ones too): a publisher without the same-board fast path
        pub = TensorPublisher(node, f'{NS}/{entry.topic}', qos_profile(), fast_path=False)
        outputs: list[Any] = []
        TensorSubscriber(node, f'{NS}/{second.topic}', qos_profile(), None,
                         lambda _t, f: outputs.append(f), lambda _t, e: None)
        assert wait_for_subscribers(node, [pub], timeout=30.0)
        for i, tensors in enumerate(bad.values()):
            pub.publish(now_header(), i, tensors)
        msg = encode_list(now_header(), 9, good)
        msg.tensors[0].data = msg.tensors[0].data[:-4]          # byte count lies about the shape
        pub._publisher.publish(msg)
        huge = encode_list(now_header(), 11, good)
        huge.tensors[0].shape = array.array('I', [2**31, 2**31, 2**31, 2**31])   # 2^126 elements
        pub._publisher.publish(huge)
        rng_bytes = np.random.default_rng(1)
        for size in (3, 64, 4096):                              # not even a TensorList
            pub._publisher.publish(rng_bytes.bytes(size))
        stats = DiagnosticsWatch(node).until(
            f'{NS}/{spec.name}',
            lambda v: v.get('drops.invalid') == '5' and v.get('drops.undecodable') == '3')
        assert stats.get('drops.invalid') == '5' and stats.get('drops.undecodable') == '3'
        assert stats['frames_out'] == '0'
        rss_before = peak_rss_mib(runner)
        pub.publish(now_header(), 10, good)
        assert spin_until(node, lambda: bool(outputs), timeout=20.0)
        assert outputs[0].frame == 10
        assert runner.poll() is None                              # still running
        assert peak_rss_mib(runner) < rss_before + 64             # the lies allocated nothing big


def test_camera_head_drops_odd_images(bundle: Path) -> None:
    head = next(s for s in make_plan(bundle, PlanOptions(namespace=NS, source='none'))
                if s.executable == 'camera_head')
    from sensor_msgs.msg import Image

    with ros_node('bad_image_driver') as node, Runner([head]) as runner:
        pub = node.create_publisher(Image, f'{NS}/{IMAGE_TOPIC}', 10)
        tensors: list[Any] = []
        TensorSubscriber(node, f'{NS}/{INPUT_TOPIC}', qos_profile(), None,
                         lambda _t, f: tensors.append(f), lambda _t, e: None)
        assert wait_for_subscribers(node, [pub], timeout=30.0)
        good = synthetic_images(1)[0]
        odd = [Image(header=good.header, height=2, width=2, encoding='yuv422', step=4, data=b'\0' * 8),
               Image(header=good.header, height=2, width=2, encoding='rgb8', step=5, data=b'\0' * 12),
               Image(header=good.header, height=4, width=4, encoding='rgb8', step=12, data=b'\0' * 20)]
        for image in odd:
            pub.publish(image)
        pub.publish(b'\x00\x01 not an image')
        stats = DiagnosticsWatch(node).until(
            f'{NS}/camera_head',
            lambda v: v.get('drops.invalid_image') == '3' and v.get('drops.undecodable_image') == '1')
        assert stats.get('drops.invalid_image') == '3' and stats.get('drops.undecodable_image') == '1'
        pub.publish(good)
        assert spin_until(node, lambda: bool(tensors), timeout=20.0)
        assert runner.poll() is None


def test_stage_refuses_a_missing_or_tampered_sub_model(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / 'bundle'
    shutil.copytree(bundle, copy)
    part = load_bundle(copy).manifest.partitions[0]
    spec = stage_spec(copy, part.name)
    model = copy / part.file
    model.write_bytes(model.read_bytes()[:-1] + b'\x00')
    tampered = subprocess.run(node_command(spec), capture_output=True, text=True, timeout=60)
    assert tampered.returncode != 0 and 'sha256' in tampered.stderr and part.file in tampered.stderr
    model.unlink()
    missing = subprocess.run(node_command(spec), capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and 'missing' in missing.stderr and part.file in missing.stderr
    assert sys.executable in node_command(spec)[0]

"""Split bundles run as separate processes over real DDS and equal the single node, frame by frame."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import DiagnosticsWatch, ros_node, split, synthetic_images, whole_model

from autodice_ros.driver import PipelineDriver
from autodice_ros.manifest import load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.runner import Runner

FRAMES = 10
RATE_HZ = 5.0


def run_frames(bundle: Path, namespace: str) -> tuple[PipelineDriver, list]:
    """Send FRAMES images at 5 fps through the whole pipeline; return the driver and the images.
    Every stage (each its own process here) has ONNX Runtime write its outputs straight into the
    shared-memory slot its same-host reader maps, once the first frame has laid the slots out."""
    manifest = load_bundle(bundle).manifest
    images = synthetic_images(FRAMES)
    specs = make_plan(bundle, PlanOptions(source='none', namespace=namespace))
    stages = [f'{namespace}/{s.name}' for s in specs if s.executable == 'stage']
    with ros_node('e2e_driver') as node, Runner(specs):
        watch = DiagnosticsWatch(node)
        driver = PipelineDriver(node, manifest, namespace, record_inputs=True)
        driver.wait_connected()
        for image in images:
            driver.send(image)
            driver.spin_for(1.0 / RATE_HZ)
        assert driver.wait_for(FRAMES, timeout=60.0), f'{len(driver.collected.outputs)}/{FRAMES} frames'
        driver.spin_for(0.5)
        reports = watch.after(stages, time.time_ns())
    assert stages and all(int(r['frames_written_in_place']) >= FRAMES for r in reports.values()), reports
    return driver, images


def check_against_single_node(model: Path, bundle: Path, namespace: str, crossing: int) -> None:
    manifest = load_bundle(bundle).manifest
    assert max(len(p.inputs) for p in manifest.partitions) >= crossing
    driver, images = run_frames(bundle, namespace)
    got = driver.collected
    sent = [(i.header.stamp.sec, i.header.stamp.nanosec) for i in images]
    assert got.order == sent                          # nothing lost, nothing reordered
    # the head numbered the driver's probe frames first, then every frame in order
    assert [got.outputs[k].frame for k in sent] == list(range(driver.probes, driver.probes + FRAMES))
    assert not got.errors
    expected = whole_model(model, [got.inputs[k] for k in sent])
    for key, ref in zip(sent, expected, strict=True):
        for name, value in ref.items():
            assert np.max(np.abs(got.outputs[key].tensors[name] - value)) <= 1e-4, (key, name)


def test_resnet50_three_ways_cut_inside_residual_blocks(tmp_path: Path,
                                                       zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('resnet50')
    # n8 is inside the first bottleneck (its shortcut input r3 crosses too); n90 inside a later one
    bundle = split(model, tmp_path / 'bundle', '--cuts', 'n8,n90')
    check_against_single_node(model, bundle, '/e2e_resnet', crossing=2)


def test_inception_split_with_several_crossing_tensors(tmp_path: Path,
                                                       zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('inception_v1')
    # n15 ends the second branch of the first inception block: three branches cross
    bundle = split(model, tmp_path / 'bundle', '--cuts', 'n15')
    check_against_single_node(model, bundle, '/e2e_inception', crossing=3)


@pytest.mark.parametrize('name', ['squeezenet'])
def test_one_partition_bundle_is_the_single_node_baseline(name: str, tmp_path: Path,
                                                          zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model(name)
    bundle = split(model, tmp_path / 'bundle', '--boards', '1')
    assert len(load_bundle(bundle).manifest.partitions) == 1
    check_against_single_node(model, bundle, '/e2e_single', crossing=1)

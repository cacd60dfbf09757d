"""Overload on real processes: a camera faster than the slowest stage.

The two documented policies (README, "Overload and QoS"), chosen by the QoS plan options:
``depth=1`` keeps only the newest frame per link (frames dropped, counted from frame-number gaps,
latency and memory bounded); ``reliability=reliable`` with ``depth`` above the backlog delivers
every frame in order (latency grows with the backlog). A backlog above ``depth`` loses the oldest
frames even on a reliable link (KEEP_LAST): the third test pins that down.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import DiagnosticsWatch, ros_node, split, synthetic_images, whole_model

from autodice_ros.driver import PipelineDriver, StampKey
from autodice_ros.manifest import load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.rosutil import spin_until
from autodice_ros.runner import Runner

CAMERA_HZ = 30.0          # resnet50 in 3 stages, 1 thread each: the slowest stage takes ~65 ms alone
WARMUP = 4                # frames sent one at a time first: sessions warm, every slot of depth 1 made


@pytest.fixture(scope='module')
def model_and_bundle(tmp_path_factory: pytest.TempPathFactory,
                     zoo_model: Callable[[str], Path]) -> tuple[Path, Path]:
    model = zoo_model('resnet50')
    return model, split(model, tmp_path_factory.mktemp('overload') / 'bundle', '--boards', '3')


@dataclass
class Overload:
    """What one burst through a running pipeline gave."""

    sent: list[StampKey]
    outputs: dict[StampKey, Any]
    order: list[StampKey]
    inputs: dict[StampKey, np.ndarray]
    latency_ms: dict[StampKey, float]
    before: dict[str, dict[str, str]]       # diagnostics after the warm-up
    after: dict[str, dict[str, str]]        # diagnostics once the burst is through
    rss_before: dict[str, int]
    rss_after: dict[str, int]
    stages: list[str] = field(default_factory=list)

    def delta(self, node: str, key: str) -> int:
        return int(self.after[node].get(key, '0')) - int(self.before[node].get(key, '0'))

    def stage_ms(self) -> dict[str, float]:
        """Each stage's median inference time in this run (under the same load as the burst)."""
        return {s: float(self.after[s]['inference_ms.p50']) for s in self.stages}

    def report(self, title: str) -> None:
        """The figures the README quotes (run with ``-s`` to see them)."""
        stages = ', '.join(f'{s} {ms:.0f}' for s, ms in self.stage_ms().items())
        print(f'\n{title}: {len(self.sent)} frames at {CAMERA_HZ:.0f} Hz, {len(self.outputs)} delivered, '
              f'{len(self.sent) - self.delta("camera_head", "frames_in")} lost before the head; '
              f'stage inference p50 ms: {stages}')
        for node, values in self.after.items():
            drops = {k: v for k, v in values.items() if k.startswith('drops.')}
            print(f'  {node:12s} in +{self.delta(node, "frames_in")} out +{self.delta(node, "frames_out")} '
                  f'{drops} peak RSS {self.rss_before.get(node, 0) / 2**20:.0f} -> '
                  f'{self.rss_after.get(node, 0) / 2**20:.0f} MB')
        lat = [self.latency_ms[k] for k in self.order]
        if lat:
            print(f'  latency ms: first {lat[0]:.0f}, median {statistics.median(lat):.0f}, '
                  f'max {max(lat):.0f}, last {lat[-1]:.0f}')


def run_burst(bundle: Path, ns: str, burst: int, reliability: str, depth: int,
              settle: float = 30.0, max_in_flight: int = 0) -> Overload:
    """Start the pipeline, warm it up frame by frame, then send ``burst`` frames at CAMERA_HZ."""
    manifest = load_bundle(bundle).manifest
    options = PlanOptions(source='none', namespace=ns, reliability=reliability, depth=depth, threads=1,
                          max_in_flight=max_in_flight)
    specs = make_plan(bundle, options)
    names = {s.name: f'{ns}/{s.name}' for s in specs}
    images = synthetic_images(WARMUP + burst, 120, 160)
    warm, rest = images[:WARMUP], images[WARMUP:]
    with ros_node('overload_driver') as node, Runner(specs) as runner:
        watch = DiagnosticsWatch(node)
        driver = PipelineDriver(node, manifest, ns, qos_depth=max(depth, burst + WARMUP), record_inputs=True)
        driver.wait_connected()
        for count, image in enumerate(warm, start=1):
            driver.send(image)
            assert driver.wait_for(count, timeout=20.0), f'warm-up frame {count} never came out'
        before = watch.after(list(names.values()), time.time_ns())
        rss_before = runner.peak_rss()
        for image in rest:
            driver.send(image)
            driver.spin_for(1.0 / CAMERA_HZ)
        last = rest[-1].header.stamp
        last_key = (int(last.sec), int(last.nanosec))
        # newest-frame policies deliver the last frame; otherwise wait until nothing more comes
        # (with max_in_flight the last image is most likely refused: what was let in is out in 3 s)
        spin_until(node, lambda: last_key in driver.collected.outputs, settle if not max_in_flight else 3.0,
                   step=0.005)
        quiet_since = len(driver.collected.outputs)
        driver.spin_for(1.0)
        assert len(driver.collected.outputs) == quiet_since, 'outputs still arriving after the burst'
        after = watch.after(list(names.values()), time.time_ns())
        rss_after = runner.peak_rss()
        assert runner.poll() is None
    got = driver.collected
    assert not got.errors, got.errors
    sent = [(int(i.header.stamp.sec), int(i.header.stamp.nanosec)) for i in rest]
    outputs = {k: got.outputs[k] for k in sent if k in got.outputs}
    latency = {k: (r.received_ns - r.sent_ns) / 1e6 for k, r in outputs.items()}
    result = Overload(sent, outputs, [k for k in got.order if k in outputs], got.inputs, latency,
                      {s: before[n] for s, n in names.items()}, {s: after[n] for s, n in names.items()},
                      rss_before, rss_after, [p.name for p in manifest.partitions])
    result.report(f'{ns}: {reliability}, depth {depth}')
    return result


def assert_equal_to_whole_model(model: Path, run: Overload) -> None:
    missing = [k for k in run.outputs if k not in run.inputs]
    assert not missing, f'outputs without a recorded input: {missing}'
    expected = whole_model(model, [run.inputs[k] for k in run.outputs])
    for key, ref in zip(run.outputs, expected, strict=True):
        for name, value in ref.items():
            assert np.max(np.abs(run.outputs[key].tensors[name] - value)) <= 1e-4, key


def in_send_order(run: Overload) -> bool:
    position = {k: i for i, k in enumerate(run.sent)}
    return [position[k] for k in run.order] == sorted(position[k] for k in run.order)


def test_newest_frame_policy_drops_counts_and_stays_bounded(model_and_bundle: tuple[Path, Path]) -> None:
    model, bundle = model_and_bundle
    run = run_burst(bundle, '/overload_newest', burst=45, reliability='reliable', depth=1)
    lost = len(run.sent) - len(run.outputs)
    assert lost > len(run.sent) // 3, 'a camera this much faster than the slowest stage must lose frames'
    assert run.sent[-1] in run.outputs, 'depth 1 keeps the newest frame: the last one comes through'
    assert in_send_order(run)
    # every frame the head numbered and the tail never saw is counted, from the frame-number gaps
    numbered = run.delta('camera_head', 'frames_out')
    assert run.delta('tail', 'drops.upstream') == numbered - len(run.outputs)
    assert_equal_to_whole_model(model, run)
    # latency: a frame waits behind at most one other per stage, never behind the backlog
    stage_sum = sum(run.stage_ms().values())
    last = [run.latency_ms[k] for k in run.order[-5:]]
    assert max(last) < 4 * stage_sum, f'last latencies {last} ms vs stages {stage_sum:.0f} ms in all'
    # memory: depth + 2 shared-memory slots per link, all made during the warm-up; the burst adds
    # no queue (45 queued frames of stage0's 1.6 MB output would be 72 MB)
    for name, peak in run.rss_after.items():
        grew = peak - run.rss_before[name]
        assert grew < 16 * 2**20, f'{name}: peak RSS grew by {grew / 2**20:.1f} MB during the burst'


def test_every_frame_policy_delivers_all_in_order_and_latency_grows(
        model_and_bundle: tuple[Path, Path]) -> None:
    model, bundle = model_and_bundle
    burst = 16
    run = run_burst(bundle, '/overload_every', burst=burst, reliability='reliable', depth=burst + 4)
    assert list(run.outputs) == run.sent, f'{len(run.sent) - len(run.outputs)} frames lost'
    assert run.order == run.sent, 'outputs out of order'
    assert all(run.delta(n, 'drops.upstream') == 0 for n in run.after)
    assert_equal_to_whole_model(model, run)
    first, last = run.latency_ms[run.sent[0]], run.latency_ms[run.sent[-1]]
    assert last > first, f'latency should grow with the backlog: first {first:.0f} ms, last {last:.0f} ms'
    slowest = max(run.stage_ms().values())
    print(f'  the last frame waited {(last - first) / slowest:.1f} slowest-stage times more than the first')


def test_reliable_backlog_beyond_depth_loses_the_oldest_frames(model_and_bundle: tuple[Path, Path]) -> None:
    """``reliable`` is no guarantee past ``depth``: KEEP_LAST overwrites, the gaps count it."""
    model, bundle = model_and_bundle
    run = run_burst(bundle, '/overload_deep', burst=24, reliability='reliable', depth=3)
    lost = len(run.sent) - len(run.outputs)
    assert lost > 0, 'a backlog beyond depth 3 should lose frames even on reliable links'
    assert run.sent[-1] in run.outputs and in_send_order(run)
    assert run.delta('tail', 'drops.upstream') == run.delta('camera_head', 'frames_out') - len(run.outputs)
    assert_equal_to_whole_model(model, run)


def test_in_flight_limit_drops_at_the_head_only_and_keeps_latency_to_one_pass(
        model_and_bundle: tuple[Path, Path]) -> None:
    """``max_in_flight``: the head refuses images while the pipeline is full, so no link drops a
    frame a stage already worked on (what a within-layer split needs: its boards must all work
    on the same frames), and a frame never waits behind another."""
    model, bundle = model_and_bundle
    run = run_burst(bundle, '/overload_admit', burst=45, reliability='reliable', depth=10, max_in_flight=1)
    numbered = run.delta('camera_head', 'frames_out')
    refused = run.delta('camera_head', 'drops.in_flight_limit')
    assert refused > len(run.sent) // 3, 'a camera this much faster than the pipeline must be refused'
    assert refused + numbered == run.delta('camera_head', 'frames_in'), 'every image is sent or refused'
    assert len(run.outputs) == numbered >= 3, 'every frame the head let in comes out'
    assert all(run.delta(n, 'drops.upstream') == 0 for n in run.after)
    assert int(run.after['camera_head']['in_flight']) <= 1
    # during the burst (a probe lost while the pipeline was connecting is the start-up's, before it)
    assert run.delta('camera_head', 'in_flight_lost') == 0
    assert in_send_order(run)
    assert_equal_to_whole_model(model, run)
    stage_sum = sum(run.stage_ms().values())
    worst = max(run.latency_ms.values())
    assert worst < 3 * stage_sum, f'latency {worst:.0f} ms: waited behind others ({stage_sum:.0f} ms a pass)'


def test_a_head_started_before_its_pipeline_lets_nothing_in_until_both_ends_are_matched(
        model_and_bundle: tuple[Path, Path]) -> None:
    """``max_in_flight`` with the camera streaming before the stages are up (a robot booting):
    the head refuses images while nobody reads ``input`` and no ``output`` reaches it -- a frame
    let in then would be lost and hold its place -- and lets frames in once the stages are up."""
    _, bundle = model_and_bundle
    ns = '/overload_early'
    specs = make_plan(bundle, PlanOptions(source='none', namespace=ns, threads=1, max_in_flight=1))
    head = [s for s in specs if s.name == 'camera_head']
    rest = [s for s in specs if s.name != 'camera_head']
    head_name = f'{ns}/camera_head'
    images = iter(synthetic_images(600, 120, 160))
    with ros_node('early_driver') as node, Runner(head) as head_runner:
        watch = DiagnosticsWatch(node)
        driver = PipelineDriver(node, load_bundle(bundle).manifest, ns)

        def stream_until(done: Callable[[], bool], timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, what
                driver.send(next(images))
                driver.spin_for(0.1)          # a 10 Hz camera

        def head_values() -> dict[str, str]:
            return watch.latest.get(head_name, (0, {}))[1]

        stream_until(lambda: int(head_values().get('frames_in', '0')) >= 10, 30.0,
                     'the head never reported the camera images')
        alone = head_values()
        assert int(alone['drops.not_connected']) == int(alone['frames_in']), alone
        assert alone['frames_out'] == '0' and alone['in_flight'] == '0', alone
        with Runner(rest) as runner:
            stream_until(lambda: len(driver.collected.outputs) >= 5, 90.0,
                         'no frame came out of the pipeline started under a streaming camera')
            driver.spin_for(3.0)              # what is still in flight comes out
            after = watch.after([head_name], time.time_ns())[head_name]
            assert runner.poll() is None and head_runner.poll() is None
    assert int(after['drops.not_connected']) >= int(alone['frames_in'])
    # every frame the head let in came out, or was counted lost (the camera never stopped)
    assert int(after['frames_out']) == len(driver.collected.outputs) + int(after['in_flight_lost']), after
    print(f'\nhead started first: {after}')

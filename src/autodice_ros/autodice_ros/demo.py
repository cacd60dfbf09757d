"""``make demo`` / ``autodice demo``: the main job end to end on this machine.

zoo CNN -> split into K partitions -> camera head + K stages + tail as separate processes over
DDS with the shipped profile -> frames from the synthetic camera -> per-frame top-5 -> summary:
fps, p50/p99 latency, per-process peak RSS, and the largest difference between the pipeline's
outputs and the unsplit model run on the very same input tensors.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.driver import PipelineDriver
from autodice_ros.errors import AutodiceError
from autodice_ros.inference import create_session, run_session
from autodice_ros.manifest import RESULT_TOPIC, load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.rosutil import spin_until, stamp_ns
from autodice_ros.runner import Runner


@dataclass(frozen=True)
class DemoConfig:
    model: str = 'resnet50'
    boards: int = 3
    frames: int = 30
    rate: float = 10.0
    depth: int = 1          # a live camera: newest frame only, so latency stays bounded
    workdir: Path = Path('out/demo')
    namespace: str = '/autodice_demo'


def prepare(config: DemoConfig) -> tuple[Path, Path]:
    """The zoo model and its K-way bundle (made once; re-used while the model file is there)."""
    from autodice_ros import cli
    from autodice_ros.graph import zoo

    config.workdir.mkdir(parents=True, exist_ok=True)
    model = config.workdir / f'{config.model}.onnx'
    if not model.exists():
        print(f'[demo] materializing zoo model {config.model} -> {model}', flush=True)
        zoo.materialize(config.model).write(model)
    bundle = config.workdir / f'{config.model}_{config.boards}way'
    print(f'[demo] splitting {model.name} into {config.boards} partitions -> {bundle}', flush=True)
    if cli.main(['split', str(model), '--boards', str(config.boards), '-o', str(bundle), '--force']) != 0:
        raise AutodiceError(f'{model}: split failed (see above)')
    return model, bundle


def whole_model_outputs(model: Path, inputs: dict[Any, np.ndarray], input_name: str) -> dict[Any, dict]:
    session, _ = create_session(model, threads=1)
    return {key: run_session(session, {input_name: x}) for key, x in inputs.items()}


def run_demo(config: DemoConfig) -> dict[str, Any]:
    import rclpy

    from autodice_msgs.msg import Classification
    from autodice_ros.codec import qos_profile

    model, bundle_dir = prepare(config)
    manifest = load_bundle(bundle_dir, check_hashes=True).manifest
    for part in manifest.partitions:
        print(f'[demo]   {part.name}: {len(part.nodes)} nodes, in {[t.name for t in part.inputs]} '
              f'-> out {[t.name for t in part.outputs]}', flush=True)
    specs = make_plan(bundle_dir, PlanOptions(namespace=config.namespace, rate=config.rate,
                                              depth=config.depth))
    rclpy.init()
    node = rclpy.create_node('autodice_demo')
    results: dict[tuple[int, int], Any] = {}

    def on_result(msg: Any) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        results[key] = msg
        best = ', '.join(f'{c}:{s:.3f}' for c, s in zip(msg.class_ids, msg.scores, strict=True))
        latency_ms = msg.latency.sec * 1e3 + msg.latency.nanosec / 1e6
        print(f'[demo] frame {msg.frame:4d} top-5 {best}  ({latency_ms:.1f} ms)', flush=True)

    node.create_subscription(Classification, f'{config.namespace}/{RESULT_TOPIC}', on_result,
                             qos_profile('reliable', 10))
    try:
        with Runner(specs) as runner:
            driver = PipelineDriver(node, manifest, config.namespace, record_inputs=True)
            print(f'[demo] {len(specs)} processes started; waiting for DDS discovery', flush=True)
            driver.wait_connected()
            start = time.monotonic()
            if not driver.wait_for(config.frames, timeout=60.0 + config.frames / config.rate * 4):
                raise AutodiceError(f'only {len(driver.collected.outputs)} of {config.frames} frames '
                                    f'came through in time')
            spin_until(node, lambda: len(results) >= config.frames, 5.0)
            elapsed = time.monotonic() - start
            rss = runner.peak_rss()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return summarize(config, model, manifest, driver, elapsed, rss)


def summarize(config: DemoConfig, model: Path, manifest: Any, driver: PipelineDriver, elapsed: float,
              rss: dict[str, int]) -> dict[str, Any]:
    got = driver.collected
    frames = sorted(got.outputs.values(), key=lambda r: r.received_ns)
    latency = [(r.received_ns - stamp_ns(r.header)) / 1e6 for r in frames]
    span = (frames[-1].received_ns - frames[0].received_ns) / 1e9 if len(frames) > 1 else elapsed
    compared = {k: x for k, x in got.inputs.items() if k in got.outputs}
    reference = whole_model_outputs(model, compared, manifest.preprocess.input)
    diff = max((float(np.max(np.abs(got.outputs[k].tensors[name] - ref[name])))
                for k, ref in reference.items() for name in ref), default=float('nan'))
    numbers = [r.frame for r in frames]
    return {
        'model': config.model, 'partitions': [p.name for p in manifest.partitions],
        'frames': len(frames), 'fps': (len(frames) - 1) / span if span > 0 else 0.0,
        'camera_frames_skipped': max(numbers) - min(numbers) + 1 - len(frames), 'qos_depth': config.depth,
        'source_rate': config.rate,
        'latency_ms': {'p50': float(np.percentile(latency, 50)), 'p99': float(np.percentile(latency, 99)),
                       'mean': statistics.fmean(latency)},
        'peak_rss_mb': {name: round(b / 2**20, 1) for name, b in rss.items()},
        'compared_frames': len(reference), 'max_abs_diff_vs_unsplit': diff,
        'dropped_or_invalid': got.errors[:5],
    }


def print_summary(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    lat = summary['latency_ms']
    print('\n[demo] summary', file=out)
    print(f"  model {summary['model']} split into {len(summary['partitions'])}: "
          f"{', '.join(summary['partitions'])}", file=out)
    print(f"  {summary['frames']} frames, {summary['fps']:.1f} fps "
          f"(camera at {summary['source_rate']:.0f} fps; {summary['camera_frames_skipped']} camera frames "
          f"skipped by the newest-frame policy, QoS depth {summary['qos_depth']})", file=out)
    print(f"  latency image->result: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", file=out)
    for name, mb in summary['peak_rss_mb'].items():
        print(f'  peak RSS {name:<24} {mb:8.1f} MB', file=out)
    print(f"  max |pipeline - unsplit model| over {summary['compared_frames']} frames: "
          f"{summary['max_abs_diff_vs_unsplit']:.3g}", file=out)
    print(json.dumps(summary), file=out)

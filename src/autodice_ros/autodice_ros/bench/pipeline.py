"""``autodice bench pipeline BUNDLE``: what a split pipeline really delivers on this machine.

In one run it measures (1) each stage alone (its ONNX Runtime session, same threads, median of
repeated runs), giving the ideal throughput ``min(1 / slowest stage, cores / sum of stages)``;
(2) the whole pipeline over DDS as separate processes, fed as fast as it takes frames, giving
the real throughput; (3) one frame at a time, giving end-to-end latency and the latency each
hop adds beyond compute; (4) the peak RSS of every process, against the single-node process
running the unsplit model (a one-partition bundle) on the same frames.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.driver import PipelineDriver
from autodice_ros.inference import create_session, run_session
from autodice_ros.manifest import Bundle, load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.preprocess import RawImage, image_to_tensor

HEIGHT, WIDTH = 480, 640


def random_inputs(entries: Any, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in entries}


def stage_times_ms(bundle: Bundle, repeat: int = 20) -> dict[str, float]:
    """Median time of each partition's sub-model alone, with its manifest thread count."""
    times = {}
    for part in bundle.manifest.partitions:
        session, _ = create_session(bundle.model_path(part), part.threads, part.provider)
        feed = random_inputs(part.inputs)
        run_session(session, feed)
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            run_session(session, feed)
            samples.append((time.perf_counter() - start) * 1e3)
        times[part.name] = statistics.median(samples)
        del session
    return times


def head_time_ms(bundle: Bundle, images: list[Any]) -> float:
    pre = bundle.manifest.preprocess
    samples = []
    for image in images[:10]:
        start = time.perf_counter()
        image_to_tensor(RawImage.from_msg(image), pre)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def drive(bundle_dir: Path, namespace: str, images: list[Any], window: int, fast_path: bool = True,
          in_process: bool = False) -> dict[str, Any]:
    """Run the pipeline: first one frame at a time (latency), then with ``window`` in flight."""
    import rclpy
    from rclpy.parameter import Parameter

    from autodice_ros.runner import Runner

    manifest = load_bundle(bundle_dir).manifest
    specs = make_plan(bundle_dir, PlanOptions(source='none', namespace=namespace, fast_path=fast_path,
                                              in_process=in_process))
    rclpy.init()
    node = rclpy.create_node('autodice_bench_pipeline',
                             parameter_overrides=[Parameter('fast_path', value=fast_path)])
    try:
        with Runner(specs) as runner:
            driver = PipelineDriver(node, manifest, namespace)
            driver.wait_connected()
            sequential, pipelined = images[:len(images) // 3], images[len(images) // 3:]
            for index, image in enumerate(sequential):
                driver.send(image)
                driver.wait_for(index + 1, timeout=60.0)
            latency = driver.latency_ms()
            done = len(driver.collected.outputs)
            pids = {s.name: runner.pid(s.name) for s in specs}
            cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
            start = time.monotonic()
            for index, image in enumerate(pipelined):
                driver.wait_for(done + index - window + 1, timeout=60.0)
                driver.send(image)
            driver.wait_for(len(images), timeout=120.0)
            seconds = time.monotonic() - start
            cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
            rss = runner.peak_rss()
            stage_names = {s.name for s in specs if s.executable in ('stage', 'stages')}
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    received = len(driver.collected.outputs) - done
    return {'fps': received / seconds if seconds else 0.0, 'frames': received,
            'latency_ms_p50': statistics.median(latency), 'latency_ms_p99': float(np.percentile(latency, 99)),
            'peak_rss_bytes': rss, 'stage_rss_bytes': {n: b for n, b in rss.items() if n in stage_names},
            'cpu_ms_per_frame': {n: c * 1e3 / max(1, received) for n, c in cpu.items()}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (load on the machine does not inflate it)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def single_bundle(bundle: Bundle, workdir: Path) -> Path:
    from autodice_ros import cli

    out = workdir / 'single'
    if cli.main(['split', bundle.manifest.model.path, '--boards', '1', '-o', str(out), '--force']) != 0:
        raise RuntimeError(f'cannot split {bundle.manifest.model.path} into a one-partition bundle')
    return out


def run(bundle_dir: Path, frames: int = 60, out: Path | None = None,
        plot: Path | None = None, fast_path: bool = True, in_process: bool = False) -> dict[str, Any]:
    from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg
    from autodice_ros.rosutil import now_header

    bundle = load_bundle(bundle_dir, check_hashes=True)
    parts = bundle.manifest.partitions
    images = []
    for i in range(frames):
        header = now_header('camera')
        header.stamp.sec, header.stamp.nanosec = 2000 + i, 0
        images.append(to_image_msg(synthetic_pattern(i, HEIGHT, WIDTH), header))
    cores = os.cpu_count() or 1
    stages = stage_times_ms(bundle)
    head = head_time_ms(bundle, images)
    ideal_fps = min(1000.0 / max(stages.values()), cores * 1000.0 / (sum(stages.values()) + head))
    split_run = drive(bundle_dir, f'/bench_split_{os.getpid()}', images, len(parts) + 1, fast_path,
                      in_process)
    with tempfile.TemporaryDirectory(prefix='autodice-bench-') as tmp:
        single_dir = single_bundle(bundle, Path(tmp))
        single_run = drive(single_dir, f'/bench_single_{os.getpid()}', images, 2, fast_path, in_process)
    hops = len(parts) + 1
    added = (split_run['latency_ms_p50'] - sum(stages.values()) - head) / hops
    single_stage = max(single_run['stage_rss_bytes'].values())
    k = len(parts)
    stage_rss = split_run['stage_rss_bytes']
    report = {
        'benchmark': 'pipeline', 'bundle': str(bundle_dir), 'model': bundle.manifest.model.name,
        'partitions': k, 'cores': cores, 'fast_path': fast_path, 'in_process': in_process,
        'stage_ms': stages, 'head_ms': head,
        'ideal_fps': ideal_fps, 'fps': split_run['fps'],
        'throughput_over_ideal': split_run['fps'] / ideal_fps, 'target_throughput_over_ideal': 0.9,
        'latency_ms': {'p50': split_run['latency_ms_p50'], 'p99': split_run['latency_ms_p99']},
        'added_latency_per_hop_ms': added, 'hops': hops,
        'single_node': {'fps': single_run['fps'], 'latency_ms_p50': single_run['latency_ms_p50'],
                        'stage_peak_rss_mb': single_stage / 2**20},
        'peak_rss_mb': {n: b / 2**20 for n, b in split_run['peak_rss_bytes'].items()},
        'cpu_ms_per_frame': split_run['cpu_ms_per_frame'],
        'cpu_ms_per_frame_total': sum(split_run['cpu_ms_per_frame'].values()),
        'single_node_cpu_ms_per_frame_total': sum(single_run['cpu_ms_per_frame'].values()),
        'stage_rss_over_single': {n: b / single_stage for n, b in stage_rss.items()},
        'target_rss_over_single': 1 / k + 0.1,
    }
    report['targets_met'] = {
        'throughput': report['throughput_over_ideal'] >= 0.9,
        'rss': all(r <= report['target_rss_over_single'] for r in report['stage_rss_over_single'].values()),
    }
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + '\n')
    if plot is not None:
        draw(report, plot)
    return report


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(report['stage_ms'])
    left.bar(names, [report['stage_ms'][n] for n in names], color='tab:blue')
    left.set_ylabel('ms per frame (alone)')
    left.set_title(f"{report['model']}: {report['fps']:.1f} fps measured, {report['ideal_fps']:.1f} ideal")
    rss = report['peak_rss_mb']
    right.bar(list(rss), list(rss.values()), color='tab:orange', label='split pipeline')
    right.axhline(report['single_node']['stage_peak_rss_mb'], color='k', linestyle='--',
                  label='single node (unsplit)')
    right.set_ylabel('peak RSS (MB)')
    right.tick_params(axis='x', rotation=45)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""``autodice soak BUNDLE``: a long run that must neither leak nor mix frames.

Runs the whole pipeline as separate processes, feeds synthetic camera frames at a fixed rate,
checks EVERY output against the unsplit model run on the very input tensor the head produced
for that frame (matched by stamp), and samples each process's resident memory. Passes when no
frame mismatches and no process's peak RSS grows by 5 % or more after warm-up.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.driver import PipelineDriver, Received
from autodice_ros.errors import BundleError
from autodice_ros.inference import create_session, run_session
from autodice_ros.manifest import load_bundle, sha256_file
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.runner import Runner, peak_rss_bytes

TOLERANCE = 1e-4
MAX_GROWTH = 0.05


@dataclass
class SoakReport:
    duration_s: float
    rate_hz: float
    sent: int = 0
    received: int = 0
    compared: int = 0
    mismatched: int = 0
    max_abs_diff: float = 0.0
    rss_after_warmup_mb: dict[str, float] = field(default_factory=dict)
    rss_at_end_mb: dict[str, float] = field(default_factory=dict)
    rss_growth: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.mismatched == 0 and self.compared > 0
                and all(g < MAX_GROWTH for g in self.rss_growth.values()))


def reference_session(bundle_dir: Path) -> tuple[Any, str]:
    """The unsplit model (the bundle's recorded source, hash-checked) and its input name."""
    model = load_bundle(bundle_dir).manifest.model
    path = Path(model.path)
    if not path.is_file() or sha256_file(path) != model.sha256:
        raise BundleError(f'{path}: the source model recorded in {bundle_dir}/manifest.json is missing '
                          f'or changed; soak compares against it')
    session, _ = create_session(path, threads=1)
    return session, load_bundle(bundle_dir).manifest.preprocess.input


def soak(bundle_dir: Path, duration: float = 600.0, rate: float = 5.0, warmup: float = 20.0,
         namespace: str = '/autodice_soak', out: Path | None = None) -> SoakReport:
    import rclpy

    from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg
    from autodice_ros.rosutil import now_header

    manifest = load_bundle(bundle_dir, check_hashes=True).manifest
    session, input_name = reference_session(bundle_dir)
    report = SoakReport(duration, rate)
    specs = make_plan(bundle_dir, PlanOptions(source='none', namespace=namespace))
    rclpy.init()
    node = rclpy.create_node('autodice_soak')
    try:
        with Runner(specs) as runner:
            driver = PipelineDriver(node, manifest, namespace, record_inputs=True)
            driver.wait_connected()
            pids = {c.spec.name: c.process.pid for c in runner.children if c.process is not None}
            start = time.monotonic()
            index = 0
            while time.monotonic() - start < duration:
                driver.send(to_image_msg(synthetic_pattern(index, 480, 640), now_header('camera')))
                index += 1
                driver.spin_for(max(0.0, start + index / rate - time.monotonic()))
                _compare_ready(driver, session, input_name, report)
                if not report.rss_after_warmup_mb and time.monotonic() - start >= warmup:
                    report.rss_after_warmup_mb = {n: peak_rss_bytes(p) / 2**20 for n, p in pids.items()}
                status = runner.poll()
                if status is not None:
                    report.errors.append(f'a node exited with {status}')
                    break
            driver.wait_for(index, timeout=30.0)
            _compare_ready(driver, session, input_name, report)
            report.rss_at_end_mb = {n: peak_rss_bytes(p) / 2**20 for n, p in pids.items()}
            report.sent = index
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    report.received = report.compared + len(driver.collected.outputs)
    report.errors += driver.collected.errors[:10]
    report.rss_growth = {n: report.rss_at_end_mb[n] / mb - 1.0
                         for n, mb in report.rss_after_warmup_mb.items() if mb and n in report.rss_at_end_mb}
    if out is not None:
        out.write_text(json.dumps({**asdict(report), 'ok': report.ok}, indent=2) + '\n')
    return report


def diff_from_reference(session: Any, input_name: str, output: Received, tensor: np.ndarray) -> float:
    """Max |difference| between one pipeline output and the unsplit model on the same input."""
    expected = run_session(session, {input_name: tensor})
    return max(float(np.max(np.abs(output.tensors[n] - v))) for n, v in expected.items())


def _compare_ready(driver: PipelineDriver, session: Any, input_name: str, report: SoakReport) -> None:
    """Compare every output whose input tensor has arrived, then forget both (bounded memory)."""
    got = driver.collected
    for key in [k for k in got.outputs if k in got.inputs]:
        diff = diff_from_reference(session, input_name, got.outputs.pop(key), got.inputs.pop(key))
        report.compared += 1
        report.max_abs_diff = max(report.max_abs_diff, diff)
        if diff > TOLERANCE:
            report.mismatched += 1
    got.order.clear()

"""``autodice bench faults [BUNDLE]``: how fast a split pipeline comes back when a stage dies.

Every node of the bundle runs here under the supervising :class:`Runner` (restart on failure),
camera frames go in at a fixed rate, and the middle stage is SIGKILLed ``kills`` times, each
time after the pipeline has resumed and run steadily for ``spacing`` seconds. For every kill:
kill -> restart (the runner spawning the stage again), restart -> resume (the first output of
a frame sent after the restart), and the frames lost in that outage. Every output is compared
with the unsplit model on the input tensor the head produced for it: a restart may lose frames,
never mix them. The issue's target: the pipeline resumes within 2 s of the restart.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodice_ros.bench.pipeline import HEIGHT, WIDTH
from autodice_ros.driver import PipelineDriver, Received, StampKey
from autodice_ros.errors import AutodiceError
from autodice_ros.manifest import load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.rosutil import now_header, spin_until
from autodice_ros.runner import Child, Runner
from autodice_ros.soak import TOLERANCE, diff_from_reference, reference_session

TARGET_S = 2.0
LEAD_S = 2.0               # steady frames before the first kill
RESTART_TIMEOUT_S = 10.0   # kill -> the runner has spawned the stage again
RESUME_TIMEOUT_S = 20.0    # restart -> an output of a frame sent after it
DRAIN_TIMEOUT_S = 10.0
POLL_S = 0.005             # how often the runner is polled (``autodice run`` polls every 0.1 s)


@dataclass
class Outage:
    """One kill of the stage; times are wall-clock ns, comparable with :class:`Received`'s."""

    killed_ns: int
    restarted_ns: int = 0
    resumed: Received | None = None


class Feed:
    """Camera frames at a fixed rate; between them the driver spins and the runner is polled."""

    def __init__(self, driver: PipelineDriver, runner: Runner, rate_hz: float) -> None:
        self.driver, self.runner, self.period = driver, runner, 1.0 / rate_hz
        self.sent: list[StampKey] = []
        self.next_at = time.monotonic()

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        import rclpy

        from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg

        deadline = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= self.next_at:
                image = to_image_msg(synthetic_pattern(len(self.sent), HEIGHT, WIDTH), now_header('camera'))
                self.driver.send(image)
                self.sent.append((int(image.header.stamp.sec), int(image.header.stamp.nanosec)))
                self.next_at = max(self.next_at + self.period, now)   # no burst after a stall
            status = self.runner.poll()
            if status is not None:
                raise AutodiceError(f'a node of the pipeline exited for good (status {status}); '
                                    'see the [autodice run] lines above')
            rclpy.spin_once(self.driver.node, timeout_sec=min(POLL_S, max(0.0, self.next_at - now)))
        return True

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)


def first_output_after(driver: PipelineDriver, sent_after_ns: int) -> Received | None:
    """The earliest-received output whose image was published after ``sent_after_ns``."""
    after = [r for r in driver.collected.outputs.values() if r.sent_ns > sent_after_ns]
    return min(after, key=lambda r: r.received_ns, default=None)


def wall_ns(monotonic_s: float) -> int:
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def kill_once(feed: Feed, child: Child) -> Outage:
    """SIGKILL ``child``, feeding on until the runner restarts it and the pipeline has resumed."""
    restarts = child.restarts
    assert child.process is not None
    os.kill(child.process.pid, signal.SIGKILL)
    outage = Outage(time.time_ns())
    if feed.run_until(lambda: child.restarts > restarts, RESTART_TIMEOUT_S):
        outage.restarted_ns = wall_ns(child.started_at)

        def resumed() -> bool:
            outage.resumed = first_output_after(feed.driver, outage.restarted_ns)
            return outage.resumed is not None

        feed.run_until(resumed, RESUME_TIMEOUT_S)
    return outage


def inject(feed: Feed, child: Child, kills: int, spacing_s: float) -> list[Outage]:
    """Kill ``child`` up to ``kills`` times, each ``spacing_s`` after the previous outage ended."""
    feed.run_for(LEAD_S)
    outages: list[Outage] = []
    for _ in range(kills):
        outages.append(kill_once(feed, child))
        if outages[-1].resumed is None:
            break
        feed.run_for(spacing_s)
    return outages


def lost_per_outage(outages: list[Outage], sent: list[StampKey], outputs: dict[StampKey, Any]) -> list[int]:
    """Frames without output sent after the previous outage's resume frame, up to this one's."""
    index = {key: i for i, key in enumerate(sent)}
    lost, start = [], 0
    for outage in outages:
        end = index[outage.resumed.stamp] if outage.resumed is not None else len(sent)
        lost.append(sum(key not in outputs for key in sent[start:end]))
        start = end + 1
    return lost


def outage_row(outage: Outage, lost: int) -> dict[str, Any]:
    """One kill in the report; wall-clock epochs too, to line up with the nodes' log lines."""
    restarted, resumed = outage.restarted_ns, outage.resumed
    return {'killed_at': outage.killed_ns / 1e9, 'restarted_at': restarted / 1e9 if restarted else None,
            'restart_s': (restarted - outage.killed_ns) / 1e9 if restarted else None,
            'resume_s': (resumed.received_ns - restarted) / 1e9 if resumed else None,
            # of which: restart -> publishing the first image that made it through (the rest is
            # that frame's trip through the pipeline)
            'resume_frame_sent_s': (resumed.sent_ns - restarted) / 1e9 if resumed else None,
            'lost_frames': lost}


def compare(bundle_dir: Path, driver: PipelineDriver) -> tuple[int, int, float]:
    """(compared, mismatched, max |diff|) of every output against the unsplit model."""
    session, input_name = reference_session(bundle_dir)
    got = driver.collected
    compared = mismatched = 0
    worst = 0.0
    for key, output in got.outputs.items():
        if key not in got.inputs:
            continue
        diff = diff_from_reference(session, input_name, output, got.inputs[key])
        compared += 1
        mismatched += diff > TOLERANCE
        worst = max(worst, diff)
    return compared, mismatched, worst


def run(bundle_dir: Path | None = None, kills: int = 3, rate_hz: float = 5.0, spacing_s: float = 3.0,
        out: Path | None = None, spare: bool = True) -> dict[str, Any]:
    """Measure; without a bundle, the zoo's SqueezeNet split three ways in a temporary directory."""
    if bundle_dir is None:
        from autodice_ros.bench.suite import split_bundle, zoo_model

        with tempfile.TemporaryDirectory(prefix='autodice-bench-faults-') as tmp:
            work = Path(tmp)
            with contextlib.redirect_stdout(sys.stderr):     # stdout: the report alone
                bundle_dir = split_bundle(work, zoo_model(work, 'squeezenet'), 3)
            return run(bundle_dir, kills, rate_hz, spacing_s, out, spare)
    import rclpy

    manifest = load_bundle(bundle_dir, check_hashes=True).manifest
    if len(manifest.partitions) < 2:
        raise AutodiceError(f'{bundle_dir}: one partition; bench faults kills a stage of a split pipeline')
    victim = manifest.partitions[len(manifest.partitions) // 2].name
    namespace = f'/bench_faults_{os.getpid()}'
    specs = make_plan(bundle_dir, PlanOptions(source='none', namespace=namespace))
    rclpy.init()
    node = rclpy.create_node('autodice_bench_faults')
    try:
        with Runner(specs, restart='on-failure', max_restarts=max(5, kills), spares=spare) as runner:
            driver = PipelineDriver(node, manifest, namespace, record_inputs=True)
            driver.wait_connected()
            feed = Feed(driver, runner, rate_hz)
            child = next(c for c in runner.children if c.spec.name == victim)
            outages = inject(feed, child, kills, spacing_s)
            feed.run_for(1.0)
            last = feed.sent[-1]       # outputs come in order: once the last is in, all are
            spin_until(node, lambda: last in driver.collected.outputs and last in driver.collected.inputs,
                       DRAIN_TIMEOUT_S, step=POLL_S)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    compared, mismatched, worst = compare(bundle_dir, driver)
    outputs = driver.collected.outputs
    lost = lost_per_outage(outages, feed.sent, outputs)
    rows = [outage_row(o, n) for o, n in zip(outages, lost, strict=True)]
    resume = [r['resume_s'] for r in rows]
    measured = [s for s in resume if s is not None]
    complete = len(measured) == kills
    report = {
        'benchmark': 'faults', 'bundle': str(bundle_dir), 'model': manifest.model.name,
        'partitions': len(manifest.partitions), 'killed_stage': victim, 'rate_hz': rate_hz,
        'kills': kills, 'spacing_s': spacing_s, 'warm_spare': spare, 'outages': rows,
        'restart_s': [r['restart_s'] for r in rows], 'resume_s': resume,
        'resume_p50_s': statistics.median(measured) if measured else None,
        'resume_max_s': max(measured) if complete and measured else None,
        'target_s': TARGET_S, 'target_met': complete and bool(measured) and max(measured) <= TARGET_S,
        'frames_sent': len(feed.sent), 'frames_received': len(outputs),
        'frames_lost': sum(key not in outputs for key in feed.sent),
        'compared_frames': compared, 'unchecked_frames': len(outputs) - compared,
        'mismatched_frames': mismatched, 'max_abs_diff': worst, 'tolerance': TOLERANCE,
        'errors': driver.collected.errors[:10],
    }
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + '\n')
    return report


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line for a person."""
    def seconds(values: list[float | None]) -> str:
        return '/'.join('-' if v is None else f'{v:.2f}' for v in values)

    p50, worst = report['resume_p50_s'], report['resume_max_s']
    return (f"faults: {report['model']} K={report['partitions']}, {report['killed_stage']} SIGKILLed "
            f"{report['kills']}x at {report['rate_hz']:g} Hz, "
            f"{'a warm spare' if report.get('warm_spare', True) else 'cold restarts'}: "
            f"restart {seconds(report['restart_s'])} s after "
            f"the kill, resume {seconds(report['resume_s'])} s after the restart (p50 "
            f"{'-' if p50 is None else f'{p50:.2f}'}, max {'-' if worst is None else f'{worst:.2f}'}; "
            f"target <= {report['target_s']:g} s {'met' if report['target_met'] else 'NOT met'}), "
            f"{report['frames_lost']} of {report['frames_sent']} frames lost, "
            f"{report['mismatched_frames']} of {report['compared_frames']} outputs mismatched")

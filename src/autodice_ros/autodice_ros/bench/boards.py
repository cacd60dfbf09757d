"""``autodice bench boards``: the pipeline on emulated boards, measured the way users quote it.

In the spirit of ros2_benchmark: every board is a network namespace with a ``tc tbf`` link and a
cgroup (CPU quota, memory limit; see :mod:`autodice_ros.boards`); each runs
``autodice run BUNDLE --board NAME``; a driver in the head board's namespace (outside its cgroup:
it is the camera, not the board) replays frames from memory and records what comes out.

Per configuration (split strategy x K boards x link rate; a within-layer strategy is
``autodice split --strategy NAME`` and runs each board's partitions in one process):

* **stages alone**: each partition's median wall and CPU time inside its board's cgroup; the ideal
  throughput is the slowest board (sum of its stages, CPU time / quota) or the busiest link
  (bytes crossing / rate), whichever is lower -- AutoDiCE's pipeline model.
* **sequential** frames (one in flight): end-to-end latency p50/p90/p99 and per-hop latency,
  from the nodes' diagnostics after each frame (``age_in`` of the receiver minus ``age_out`` of
  the sender), next to the wire time (bytes / link rate).
* **peak search**: fixed-rate trials; a trial is sustained when fewer than 5 % of its frames are
  lost or later than the deadline (3 x the sequential p50, at least 1 s) and the outputs keep
  pace with the inputs (output rate >= 95 % of the input rate: a growing backlog is drops to
  come). The peak is the highest sustained rate; at it: throughput, latency, CPU seconds per
  frame per board (``cpuacct``), bytes per frame per link (``eth0`` counters), the energy
  estimate (``config/energy.yaml``, :mod:`autodice_ros.energy`), and how busy the whole host was
  (near 100 %, other work took the boards' quota: the figures do not describe the boards).
* **peak RSS** per board (sum of the VmHWM of the board's processes) and the cgroup's peak
  (``memory.max_usage_in_bytes``, page cache included).

Then the memory demonstration (``--demo-only``: nothing else): the whole model on one board with
a memory limit (default 576 MiB, see :data:`DEMO_MAPPINGS`), the partitioner's K-way split, the
within-layer K-way splits, and memory-aware mappings on K such boards; without ``--short``, the
whole model once more at 1 GiB for reference. Each board is charged for the weights it reads: the
bundle is evicted from the host's page cache first (sessions map the weights from the file, and a
cgroup v1 board pays only for the pages it brings in). A board short of memory for its weights is
seldom OOM-killed: the kernel pages the mapped weights out and the board reads them back from the
file (``reread_mib``, from ``memory.stat``). An OOM kill (``memory.oom_control`` oom_kill), a
board's exit, or a board that re-read 4 x its weights (thrashing) is reported, not waited out.

Targets are checked from this one run and printed as ratios. Output: JSON, a markdown table and
PNG plots. Timings on a shared host are not representative: compare within one run.

The driver and the stage timer are roles of this module: ``python -m autodice_ros.bench.boards
driver|stages ...`` (the driver speaks JSON lines on stdin/stdout; the tests use it too).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from autodice_ros.boards import (
    Boards,
    BoardsSpec,
    LinkCounters,
    LinkSpec,
    config_file,
    format_rate,
    parse_bytes,
    parse_rate,
)
from autodice_ros.errors import AutodiceError, BoardsError

HEIGHT, WIDTH = 480, 640
SUSTAINED_DROPS = 0.05
THRASH_FACTOR = 4      # memory demo: a board that re-read 4 x its weights (at least THRASH_MIN bytes)
THRASH_MIN = 2**30     # from the file is thrashing: stopped and reported
KEEP_PACE = 0.95
BOARDS_CONFIG = 'boards.yaml'

# Memory-aware mappings for the memory demonstration. VGG19: fc6 holds 411 MB of the 575 MB of
# weights. Sessions map the weights from the file (lean loading), so a board short of memory
# pages them out and reads them back every frame rather than being OOM-killed for them; what
# cannot be paged out is the processes (camera head + tail + `autodice run` ~130 MiB, a stage
# 135-340 MiB: activations, ONNX Runtime's buffers) and DDS shared memory (~220 MiB with the
# one-board profile's former 64 MiB segment, 16 MiB a process since). Measured here with that
# segment (cgroup peaks; a frame in, then three): the whole model on one board peaks at 1091 MiB
# unlimited (anon 315, weights 548, shm 222); at 1 GiB it runs at its limit
# (re-reading 0.5-3.3 GiB over the demo); at 576 MiB it thrashes (stopped at 4 x its weights
# re-read, ~20 s; left alone once OOM-killed, once 3.5 x slower re-reading 16.8 GiB); at 512-544
# MiB it is OOM-killed. The partitioner's 3-way plan puts fc6-fc8 (494 MB) and the tail on one
# board, which thrashes at 576-640 MiB. This mapping gives fc6 a board of its own, with neither
# camera head nor tail: at 576 MiB (7 runs) the boards peak at 508-576, 540 and 350 MiB with
# nothing re-read; at 512 MiB the fc6 board re-reads fc6 every frame. Node ids: ``autodice nodes
# vgg19.onnx``.
DEMO_MAPPINGS = {
    'vgg19': """partitions:
  - {name: convs, board: board0, from: n0, to: n37}
  - {name: fc6, board: board1, from: n38, to: n40}
  - {name: fc7_fc8, board: board2, from: n41, to: n45}
""",
}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {'p50': float('nan'), 'p90': float('nan'), 'p99': float('nan')}
    arr = np.asarray(values, dtype=float)
    return {f'p{q}': float(np.percentile(arr, q)) for q in (50, 90, 99)}


# == the driver: inside the head board's namespace ==============================================

def _driver(argv: Sequence[str]) -> int:
    """Serve JSON-line commands: connect, warmup, sequential, rate, record, diagnostics, quit (one
    answer each)."""
    parser = argparse.ArgumentParser(prog='bench.boards driver')
    parser.add_argument('bundle')
    parser.add_argument('--namespace', default='/autodice')
    parser.add_argument('--images', type=int, default=8, help='distinct images cycled')
    parser.add_argument('--height', type=int, default=HEIGHT)
    parser.add_argument('--width', type=int, default=WIDTH)
    parser.add_argument('--record', action='store_true', help="also keep the head's input tensors")
    args = parser.parse_args(argv)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from autodice_ros.driver import PipelineDriver
    from autodice_ros.manifest import load_bundle
    from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg
    from autodice_ros.rosutil import now_header

    manifest = load_bundle(args.bundle).manifest
    rclpy.init()
    node = rclpy.create_node('autodice_bench_driver')
    driver = PipelineDriver(node, manifest, args.namespace, record_inputs=args.record)
    diagnostics: dict[str, dict[str, str]] = {}

    heard: dict[str, float] = {}

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            diagnostics[status.name] = {kv.key: kv.value for kv in status.values}
            heard[status.name] = time.monotonic()

    def fresh_diagnostics(timeout: float = 3.0) -> dict[str, dict[str, str]]:
        """Every node's values from a report sent after now (nodes report once a second)."""
        since = time.monotonic()
        _spin_until(driver, lambda: all(t > since for t in heard.values()), timeout)
        return {name: dict(values) for name, values in diagnostics.items()}

    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 50)
    images = [to_image_msg(synthetic_pattern(i, args.height, args.width), now_header('camera'))
              for i in range(args.images)]
    counter = [0]

    def send() -> tuple[int, int]:
        image = images[counter[0] % len(images)]
        counter[0] += 1
        stamp = now_header('camera').stamp
        image.header.stamp = stamp
        driver.send(image)
        return (int(stamp.sec), int(stamp.nanosec))

    def answer(data: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + '\n')
        sys.stdout.flush()

    def sequential(frames: int, timeout: float) -> dict[str, Any]:
        """One frame in flight at a time; after each, every node's diagnostics (their ``.last``
        values then describe that frame: see :func:`hop_latencies`)."""
        latencies: list[float] = []
        snapshots = [fresh_diagnostics()]
        for _ in range(frames):
            key = send()
            if not _wait_key(driver, key, timeout):
                return {'error': f'no output within {timeout:.0f} s', 'latency_ms': latencies}
            got = driver.collected.outputs[key]
            latencies.append((got.received_ns - got.sent_ns) / 1e6)
            snapshots.append(fresh_diagnostics())
        return {'latency_ms': latencies, 'diagnostics': snapshots}

    def warmup(needed: int, interval: float, timeout: float) -> dict[str, Any]:
        """A frame every ``interval`` s until the last ``needed`` all came out (or ``timeout``).

        The first frames may be lost on purpose: a fast-path subscriber switches to TensorList
        messages when the first descriptor comes from another board.
        """
        keys: list[tuple[int, int]] = []
        outputs = driver.collected.outputs

        def done() -> bool:
            return len(keys) >= needed and all(k in outputs for k in keys[-needed:])

        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            keys.append(send())
            _spin_until(driver, done, min(interval, max(0.0, end - time.monotonic())))
        return {'ok': done(), 'sent': len(keys), 'received': sum(1 for k in keys if k in outputs)}

    def rate_trial(rate: float, frames: int, deadline: float, drain: float) -> dict[str, Any]:
        keys, sent_ns = [], []
        start = time.monotonic()
        for index in range(frames):
            driver.spin_for(max(0.0, start + index / rate - time.monotonic()))
            keys.append(send())
            sent_ns.append(time.time_ns())
        outputs = driver.collected.outputs
        _spin_until(driver, lambda: all(k in outputs for k in keys), drain)
        got = [outputs[k] for k in keys if k in outputs]
        latency = [(r.received_ns - r.sent_ns) / 1e6 for r in got]
        received = sorted(r.received_ns for r in got)
        return {'rate': rate, 'sent': frames, 'received': len(got),
                'late': sum(1 for ms in latency if ms > deadline * 1e3),
                'send_span_s': (sent_ns[-1] - sent_ns[0]) / 1e9 if frames > 1 else 0.0,
                'receive_span_s': (received[-1] - received[0]) / 1e9 if len(received) > 1 else 0.0,
                'latency_ms': latency}

    def record(frames: int, rate: float, path: str, timeout: float) -> dict[str, Any]:
        keys = []
        start = time.monotonic()
        for index in range(frames):
            driver.spin_for(max(0.0, start + index / rate - time.monotonic()))
            keys.append(send())
        collected = driver.collected
        _spin_until(driver, lambda: all(k in collected.outputs and k in collected.inputs for k in keys),
                    timeout)
        arrays: dict[str, Any] = {}
        for index, key in enumerate(keys):
            if key in collected.inputs:
                arrays[f'input_{index}'] = collected.inputs[key]
            if key in collected.outputs:
                arrays[f'frame_{index}'] = np.asarray(collected.outputs[key].frame)
                for name, value in collected.outputs[key].tensors.items():
                    arrays[f'output_{index}_{name}'] = value
        np.savez(path, **arrays)
        order = [k for k in collected.order if k in set(keys)]
        outputs = collected.outputs
        return {'sent': frames, 'received': sum(1 for k in keys if k in outputs),
                'in_order': order == [k for k in keys if k in outputs],
                'errors': collected.errors[:5],
                'stamps_ns': [k[0] * 1_000_000_000 + k[1] for k in keys],
                'latency_ms': [(outputs[k].received_ns - outputs[k].sent_ns) / 1e6 if k in outputs else None
                               for k in keys]}

    try:
        for line in sys.stdin:
            request = json.loads(line)
            cmd = request.get('cmd')
            if cmd == 'connect':
                try:
                    driver.wait_connected(float(request.get('timeout', 60.0)))
                    answer({'ok': True})
                except AutodiceError as exc:
                    answer({'error': str(exc)})
            elif cmd == 'warmup':
                answer(warmup(int(request.get('frames', 2)), float(request.get('interval', 3.0)),
                              float(request.get('timeout', 120.0))))
            elif cmd == 'sequential':
                answer(sequential(int(request['frames']), float(request.get('timeout', 60.0))))
            elif cmd == 'rate':
                answer(rate_trial(float(request['rate']), int(request['frames']),
                                  float(request['deadline']), float(request['drain'])))
            elif cmd == 'record':
                answer(record(int(request['frames']), float(request.get('rate', 5.0)), str(request['path']),
                              float(request.get('timeout', 60.0))))
            elif cmd == 'diagnostics':
                answer(fresh_diagnostics())
            elif cmd == 'quit':
                answer({'ok': True})
                break
            else:
                answer({'error': f'unknown command {cmd!r}'})
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _spin_until(driver: Any, done: Callable[[], bool], timeout: float) -> bool:
    from autodice_ros.rosutil import spin_until

    return spin_until(driver.node, done, timeout, step=0.005)


def _wait_key(driver: Any, key: tuple[int, int], timeout: float) -> bool:
    return _spin_until(driver, lambda: key in driver.collected.outputs, timeout)


class BoardDiedError(AutodiceError):
    """A board's pipeline died (OOM kill or crash) while the driver waited."""


class DriverClient:
    """The benchmark's end of the driver: JSON lines, with a watchdog on the boards."""

    def __init__(self, proc: subprocess.Popen[str], watch: Callable[[], str | None]) -> None:
        self.proc = proc
        self.watch = watch

    def request(self, wait: float, command: Mapping[str, Any]) -> dict[str, Any]:
        """Send one command; its answer, or :class:`BoardDiedError` when a board dies first."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + '\n')
        self.proc.stdin.flush()
        deadline = time.monotonic() + wait
        while True:
            failure = self.watch()
            if failure:
                raise BoardDiedError(failure)
            if self.proc.poll() is not None:
                raise BoardDiedError(f'the driver exited with {self.proc.returncode}')
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise BoardDiedError(f'the driver closed its output (exit {self.proc.poll()})')
                reply: dict[str, Any] = json.loads(line)
                return reply
            if time.monotonic() > deadline:
                raise BoardDiedError(f'the driver did not answer {command.get("cmd")!r} within {wait:.0f} s')

    def close(self) -> None:
        """Stop the driver process: 'quit', then a kill after 5 s."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_driver(boards: Boards, bundle: Path, log: IO[Any] | None = None,
                 namespace: str = '/autodice', record: bool = False) -> subprocess.Popen[str]:
    """The driver process in the head board's namespace, outside its cgroup (``record``: it
    keeps the head's input tensors too, for the ``record`` command)."""
    from autodice_ros.boards import pipeline_transport
    from autodice_ros.manifest import load_bundle
    from autodice_ros.plan import link_boards, node_env

    manifest = load_bundle(bundle).manifest
    head, _ = link_boards(manifest)
    env = boards.env(head)
    env.update(node_env(pipeline_transport(manifest)))
    cmd = [sys.executable, '-m', 'autodice_ros.bench.boards', 'driver', str(Path(bundle).resolve()),
           '--namespace', namespace, *(['--record'] if record else [])]
    return boards.spawn(head, cmd, env=env, limits=False, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=log, text=True)


def connect_driver(boards: Boards, bundle: Path, watch: Callable[[], str | None],
                   log: IO[Any] | None = None, record: bool = False, timeout: float = 60.0,
                   attempts: int = 2, say: Callable[[str], None] = lambda _: None) -> DriverClient:
    """A driver (:func:`start_driver`) that has seen a probe frame come out of the tail.

    Why the retries: across emulated boards (Fast DDS LARGE_DATA, endpoints discovered over TCP),
    a participant that starts after the pipeline now and then never learns one stage's endpoints:
    the driver waited 280 s for a stage that a participant started in the same namespace at that
    moment saw at once, and the pipeline itself was connected. A driver that has not connected
    within ``timeout`` is replaced by a new one (a new participant), up to ``attempts`` in all;
    any other failure (probes that never come out, a board that died) is raised at once.
    """
    errors: list[str] = []
    for attempt in range(1, attempts + 1):
        driver = DriverClient(start_driver(boards, bundle, log, record=record), watch)
        reply = driver.request(timeout + 30.0, {'cmd': 'connect', 'timeout': timeout})
        if 'error' not in reply:
            return driver
        driver.close()
        errors.append(reply['error'])
        if 'did not connect' not in reply['error']:
            break
        if attempt < attempts:
            say(f'driver {attempt} of {attempts} did not see the whole pipeline; starting a new one '
                f'({reply["error"]})')
    raise BoardDiedError(f'{len(errors)} driver(s) tried: ' + ' | '.join(errors))


def thrash_watch(boards: Boards, weights: Mapping[str, int],
                 check: Callable[[], str | None]) -> Callable[[], str | None]:
    """``check``, then: the first board that re-read :data:`THRASH_FACTOR` x its weights (and at
    least :data:`THRASH_MIN`) from the file -- mapped weights pushed out by its memory limit and
    read back -- so a board that only pages its weights in and out is reported, not waited out.
    On this host the file comes from the host's disk cache; from a board's SD card or eMMC each
    re-read costs far more.
    """
    page = os.sysconf('SC_PAGE_SIZE')

    def thrashing() -> str | None:
        failure = check()
        if failure:
            return failure
        for board, size in weights.items():
            reread = boards.memory_stat(board).get('total_workingset_refault_file', 0) * page
            if size and reread > max(THRASH_FACTOR * size, THRASH_MIN):
                return (f'board {board}: thrashing at its memory limit '
                        f'({_mib(boards.spec.board(board).memory)}): re-read {reread / 2**30:.1f} GiB of '
                        f'weights from the file ({reread / size:.0f} x its {size / 2**20:.0f} MiB)')
        return None
    return thrashing


def board_watch(boards: Boards, procs: Mapping[str, subprocess.Popen[Any]]) -> Callable[[], str | None]:
    """A check that names the first board whose pipeline died, and whether it was OOM-killed."""
    def check() -> str | None:
        for board, proc in procs.items():
            kills = boards.oom_kills(board)
            code = proc.poll()
            if kills or code is not None:
                why = (f'OOM-killed {kills} task(s) (memory limit '
                       f'{_mib(boards.spec.board(board).memory)})' if kills else f'exited with {code}')
                return f'board {board}: {why}'
        return None
    return check


def _mib(value: int | None) -> str:
    return 'none' if value is None else f'{value / 2**20:.0f} MiB'


# == stage times inside a board's cgroup =========================================================

def _stages(argv: Sequence[str]) -> int:
    """Median time of each partition of one board, run alone (prints JSON)."""
    parser = argparse.ArgumentParser(prog='bench.boards stages')
    parser.add_argument('bundle')
    parser.add_argument('--board', required=True)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args(argv)

    from autodice_ros.inference import create_session, run_session
    from autodice_ros.manifest import load_bundle

    bundle = load_bundle(args.bundle)
    wall, cpu = {}, {}
    for part in bundle.manifest.on_board(args.board):
        session, _ = create_session(bundle.model_path(part), part.threads, part.provider)
        rng = np.random.default_rng(0)
        feed = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in part.inputs}
        run_session(session, feed)
        walls, cpus = [], []
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            run_session(session, feed)
            walls.append((time.perf_counter() - start) * 1e3)
            cpus.append((time.process_time() - start_cpu) * 1e3)
        wall[part.name], cpu[part.name] = statistics.median(walls), statistics.median(cpus)
        del session
    print(json.dumps({'wall_ms': wall, 'cpu_ms': cpu}))
    return 0


def stage_times(boards: Boards, bundle: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Every partition's median wall and CPU time alone (``wall_ms``, ``cpu_ms``), each measured
    inside its own board's cgroup."""
    from autodice_ros.manifest import load_bundle

    times: dict[str, dict[str, float]] = {'wall_ms': {}, 'cpu_ms': {}}
    for board in load_bundle(bundle).manifest.boards:
        cmd = [sys.executable, '-m', 'autodice_ros.bench.boards', 'stages', str(bundle),
               '--board', board, '--repeat', str(repeat)]
        proc = boards.spawn(board, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            kills = boards.oom_kills(board)
            raise BoardDiedError(f'board {board}: timing its stages alone failed (exit {proc.returncode}'
                               f'{", OOM-killed" if kills else ""}): {err.strip()[-300:]}')
        for key, values in json.loads(out).items():
            times[key].update(values)
    return times


# == configuration =============================================================================

@dataclass(frozen=True)
class BenchConfig:
    model: str = 'vgg19'
    ks: tuple[int, ...] = (1, 2, 3, 4)
    links: tuple[str, ...] = ('100mbit', '1gbit', 'unshaped')
    strategies: tuple[str, ...] = ('layer', 'lop', 'hybrid')
    cpu: float | None = 0.5
    memory: int | None = None            # throughput runs: no limit (the demo sets one)
    one_process: bool = False            # throughput runs: each board one process (plan option)
    depth: int = 0                       # throughput runs: the plan's QoS depth (0: its default)
    max_in_flight: int | None = None     # throughput runs: the plan's max_in_flight (0: no limit;
                                         # None: WITHIN_LAYER_IN_FLIGHT for within-layer splits)
    demo_memory: int | None = 576 * 2**20      # see DEMO_MAPPINGS for why this limit
    demo_reference_memory: int | None = 2**30  # the whole model once more, at this limit
    demo_ks: tuple[int, ...] = (1, 3)
    demo_model: str = 'vgg19'
    demo_mappings: tuple[Path, ...] = ()
    demo_strategies: tuple[str, ...] = ('lop',)     # within-layer K-way splits, if split has them
    sequential: int = 10
    trial_frames: int = 24
    trial_seconds: float = 8.0
    max_trials: int = 6
    stage_repeat: int = 5
    target_model: str = 'vgg19'
    out: Path = Path('bench-results')
    boards_config: Path | None = None
    energy_config: Path | None = None

    @classmethod
    def short(cls, **changes: Any) -> BenchConfig:
        """What ``make bench`` runs: well under 10 minutes on a 2-core host."""
        base = cls(ks=(1, 3), links=('1gbit', '100mbit'), strategies=('layer',), sequential=5,
                   trial_frames=12, trial_seconds=5.0, max_trials=4, stage_repeat=3, demo_strategies=(),
                   demo_reference_memory=None)
        return replace(base, **changes)


# == one configuration =========================================================================

@dataclass
class Run:
    strategy: str
    k: int
    link: str
    bundle: str = ''
    boards: dict[str, str] = field(default_factory=dict)
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    ideal: dict[str, Any] = field(default_factory=dict)
    sequential: dict[str, Any] = field(default_factory=dict)
    hops: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    peak: dict[str, Any] = field(default_factory=dict)
    per_board: dict[str, dict[str, float]] = field(default_factory=dict)
    energy_j_per_frame: dict[str, float] = field(default_factory=dict)
    error: str = ''


def crossing_bytes(manifest: Any) -> dict[tuple[str, str], int]:
    """Bytes per frame on each board-to-board edge (source board, target board)."""
    from autodice_ros.plan import link_boards

    head, tail = link_boards(manifest)
    board = {p.name: p.board for p in manifest.partitions}
    board.update({'input': head, 'output': tail})
    sizes = {t.name: t.nbytes for t in manifest.inputs}
    for part in manifest.partitions:
        sizes.update({t.name: t.nbytes for t in part.outputs})
    totals: dict[tuple[str, str], int] = {}
    for edge in manifest.edges:
        if board[edge.source] != board[edge.target]:
            key = (board[edge.source], board[edge.target])
            totals[key] = totals.get(key, 0) + sum(sizes.get(t, 0) for t in edge.tensors)
    return totals


def ideal_fps(manifest: Any, stage_ms: Mapping[str, Mapping[str, float]], link: LinkSpec,
              cpu: float | None) -> dict[str, Any]:
    """AutoDiCE's pipeline bound: the slowest board, or the busiest link.

    A board needs the wall time of its stages, and with a CPU quota of ``cpu`` cores at least
    their CPU time / ``cpu`` (the quota lets one short stage run at full speed, not a stream).
    """
    per_board: dict[str, float] = {}
    for part in manifest.partitions:
        need = stage_ms['wall_ms'][part.name]
        if cpu:
            need = max(need, stage_ms['cpu_ms'][part.name] / cpu)
        per_board[part.board] = per_board.get(part.board, 0.0) + need
    compute = 1000.0 / max(per_board.values())
    link_fps = float('inf')
    if link.rate:
        load: dict[tuple[str, str], int] = {}
        for (src, dst), nbytes in crossing_bytes(manifest).items():
            load[(src, 'tx')] = load.get((src, 'tx'), 0) + nbytes
            load[(dst, 'rx')] = load.get((dst, 'rx'), 0) + nbytes
        if load:
            link_fps = 1.0 / link.wire_seconds(max(load.values()))
    return {'fps': min(compute, link_fps), 'compute_fps': compute,
            'link_fps': link_fps if link_fps != float('inf') else None,
            'busiest_board_ms': max(per_board.values())}


def hop_latencies(manifest: Any, snapshots: Sequence[Mapping[str, Mapping[str, str]]], namespace: str,
                  link: LinkSpec) -> list[dict[str, Any]]:
    """Per partition-graph edge, the median over sequential frames of the receiver's ``age_in``
    minus the sender's ``age_out`` (the nodes' ``.last`` values after each frame), and the wire
    time of its bytes. A frame counts for an edge only when the sender published exactly one
    frame and the receiver took at least one message since the snapshot before. A receiver that
    joins several inputs stamps ``age_in`` when the last one arrives, so such an edge (``join``)
    gets no hop/wire ratio: its time includes waiting for the other producers."""
    from autodice_ros.plan import link_boards, stage_node_name

    head, tail = link_boards(manifest)
    board = {p.name: p.board for p in manifest.partitions}
    board.update({'input': head, 'output': tail})
    node = {p.name: stage_node_name(p.name) for p in manifest.partitions}
    node.update({'input': 'camera_head', 'output': 'tail'})
    sizes = {t.name: t.nbytes for t in manifest.inputs}
    for part in manifest.partitions:
        sizes.update({t.name: t.nbytes for t in part.outputs})
    prefix = namespace.rstrip('/')

    def number(snapshot: Mapping[str, Mapping[str, str]], name: str, key: str) -> float | None:
        text = snapshot.get(f'{prefix}/{name}', {}).get(key)
        return float(text) if text is not None else None

    incoming: dict[str, int] = {}
    for edge in manifest.edges:
        incoming[edge.target] = incoming.get(edge.target, 0) + 1
    hops = []
    for edge in manifest.edges:
        src, dst = node[edge.source], node[edge.target]
        arrival = 'latency_ms.last' if edge.target == 'output' else 'age_in_ms.last'
        samples = []
        for before, after in zip(snapshots, snapshots[1:], strict=False):
            found = [number(before, src, 'frames_out'), number(after, src, 'frames_out'),
                     number(before, dst, 'frames_in'), number(after, dst, 'frames_in'),
                     number(after, src, 'age_out_ms.last'), number(after, dst, arrival)]
            if any(v is None for v in found):
                continue
            out0, out1, in0, in1, sent, got = cast(list[float], found)
            if out1 - out0 == 1 and in1 > in0:
                samples.append(got - sent)
        nbytes = sum(sizes.get(t, 0) for t in edge.tensors)
        across = board[edge.source] != board[edge.target]
        hop = statistics.median(samples) if samples else None
        wire = link.wire_seconds(nbytes) * 1e3 if across and link.rate else None
        join = incoming[edge.target] > 1       # age_in waits for the receiver's other inputs too
        hops.append({'edge': f'{edge.source}->{edge.target}', 'across_boards': across, 'bytes': nbytes,
                     'frames': len(samples), 'hop_ms': hop, 'wire_ms': wire, 'join': join,
                     'hop_over_wire': hop / wire if hop is not None and wire and not join else None})
    return hops


def _trial_ok(trial: Mapping[str, Any]) -> bool:
    lost = trial['sent'] - trial['received']
    if (lost + trial['late']) >= SUSTAINED_DROPS * trial['sent']:
        return False
    if trial['received'] < 2 or trial['receive_span_s'] <= 0:
        return True
    in_rate = (trial['sent'] - 1) / trial['send_span_s']
    out_rate = (trial['received'] - 1) / trial['receive_span_s']
    return out_rate >= KEEP_PACE * in_rate


def _summarize_trial(trial: dict[str, Any]) -> dict[str, Any]:
    latency = trial.pop('latency_ms')
    trial['latency_ms'] = _percentiles(latency)
    trial['drops'] = (trial['sent'] - trial['received'] + trial['late']) / trial['sent']
    trial['fps'] = ((trial['received'] - 1) / trial['receive_span_s']
                    if trial['received'] > 1 and trial['receive_span_s'] > 0 else 0.0)
    trial['sustained'] = _trial_ok(trial)
    return trial


@dataclass(frozen=True)
class DemoCase:
    """One run of the memory demonstration."""

    label: str                      # names the bundle in the work dir
    how: list[str]                  # ``autodice split`` arguments
    run_args: list[str]             # ``autodice run`` arguments
    memory: int | None              # the limit per board
    source: Path | None = None      # a mapping file: re-split when it changes
    reference: bool = False         # shown for comparison, not part of the target


class Bench:
    def __init__(self, config: BenchConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        from autodice_ros.energy import load_energy

        self.energy = load_energy(config.energy_config)
        self.workdir = config.out / 'work'
        self.logdir = config.out / 'logs'
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._model: dict[str, Path] = {}

    # -- inputs ----------------------------------------------------------------------------------

    def model_path(self, name: str) -> Path:
        if name not in self._model:
            path = Path(name)
            if not path.is_file():
                from autodice_ros.graph import zoo

                path = self.workdir / f'{name}.onnx'
                if not path.exists():
                    self.log(f'materializing zoo model {name}')
                    zoo.materialize(name).write(path)
            self._model[name] = path
        return self._model[name]

    def bundle(self, model: str, label: str, how: Sequence[str], source: Path | None = None) -> Path:
        """``autodice split MODEL <how>`` into the work dir, once (``label`` names the bundle), and
        again when ``source`` (a mapping file) is newer than the bundle."""
        from autodice_ros import cli

        path = self.model_path(model)
        out = self.workdir / f'{path.stem}_{label}'
        manifest = out / 'manifest.json'
        if not manifest.is_file() or (source is not None
                                      and source.stat().st_mtime > manifest.stat().st_mtime):
            self.log(f'splitting {path.name} ({" ".join(how)}) -> {out}')
            if cli.main(['split', str(path), *how, '-o', str(out), '--force']) != 0:
                raise BoardsError(f'autodice split {path} {" ".join(how)} failed (see above)')
        return out

    def strategy_bundle(self, model: str, k: int, strategy: str) -> Path:
        """The K-way bundle of ``strategy``: ``layer`` is ``split --boards K``; any other name is
        handed to ``split --strategy`` (issue 7's within-layer splitting) where that exists."""
        how = ['--boards', str(k)]
        if strategy != 'layer':
            if not split_has_strategy():
                raise BoardsError(f'strategy {strategy!r} needs `autodice split --strategy` (issue 7); '
                                  f'this autodice has none')
            how += ['--strategy', strategy]
        return self.bundle(model, f'{strategy}_{k}', how)

    def spec(self, names: Sequence[str], memory: int | None, link: LinkSpec) -> BoardsSpec:
        from autodice_ros.boards import load_spec

        path = self.config.boards_config or config_file(BOARDS_CONFIG)
        spec = load_spec(path if path.is_file() else None, names)
        boards = tuple(replace(b, cpu=self.config.cpu, memory=memory, link=link) for b in spec.boards)
        return replace(spec, boards=boards)

    # -- one strategy x K, every link rate ----------------------------------------------------

    def run_config(self, strategy: str, k: int) -> list[Run]:
        from autodice_ros.manifest import load_bundle

        cfg = self.config
        links = [LinkSpec(parse_rate(text)) for text in cfg.links]
        if k == 1:
            links = links[:1]        # one board: no board-to-board link to shape
        label = (lambda link: 'none (one board)') if k == 1 else (lambda link: format_rate(link.rate))
        try:
            bundle = self.strategy_bundle(cfg.model, k, strategy)
        except AutodiceError as exc:
            self.log(f'{strategy} K={k}: skipped: {exc}')
            return [Run(strategy, k, label(link), error=f'skipped: {exc}') for link in links]
        manifest = load_bundle(bundle).manifest
        spec = self.spec(manifest.boards, cfg.memory, links[0])
        runs = [Run(strategy, k, label(link), str(bundle)) for link in links]
        tag = f'{strategy}-k{k}'
        with Boards(spec, log=self.log) as boards, \
                open(self.logdir / f'{tag}.log', 'w') as logfile:
            try:
                self.log(f'{tag}: timing each stage alone inside its board')
                stage_ms = stage_times(boards, bundle, cfg.stage_repeat)
                for name in boards.spec.names:
                    boards.reset_peaks(name)
                procs = boards.start_pipeline(bundle, ['--source', 'none',
                                                       *run_args(strategy, cfg.one_process, cfg.depth,
                                                                cfg.max_in_flight)],
                                              stdout=logfile, stderr=logfile)
                driver = connect_driver(boards, bundle, board_watch(boards, procs), logfile,
                                        timeout=120.0, attempts=3, say=self.log)
                warm = driver.request(400.0, {'cmd': 'warmup', 'frames': 2, 'interval': 3.0,
                                              'timeout': 300.0})
                if not warm.get('ok'):
                    raise BoardDiedError(f'warm-up: {warm.get("received")} of {warm.get("sent")} frames '
                                         f'came out, not the last two')
                for run, link in zip(runs, links, strict=True):
                    boards.set_links(link)
                    run.boards = {b.name: Boards.describe(b) for b in boards.spec.boards}
                    run.stage_ms = stage_ms
                    run.ideal = ideal_fps(manifest, stage_ms, link, cfg.cpu)
                    self.log(f'{tag} link {run.link}: ideal {run.ideal["fps"]:.2f} fps; sequential latency')
                    self.measure(run, boards, driver, manifest, link)
                usage = {b: boards.usage(b) for b in boards.spec.names}
                stage_pids = {b: _stage_pids(boards, b) for b in boards.spec.names}
                for run in runs:
                    for board, use in usage.items():
                        entry = run.per_board.setdefault(board, {})
                        entry['rss_peak_mb'] = sum(use.rss_peak_bytes.values()) / 2**20
                        entry['rss_end_mb'] = sum(use.rss_bytes.values()) / 2**20
                        entry['stage_rss_peak_mb'] = sum(use.rss_peak_bytes.get(p, 0)
                                                         for p in stage_pids[board]) / 2**20
                        entry['cgroup_peak_mb'] = use.memory_peak_bytes / 2**20
                driver.request(30.0, {'cmd': 'quit'})
            except AutodiceError as exc:
                self.log(f'{tag}: failed: {exc}')
                for run in runs:
                    run.error = run.error or str(exc)
        return runs

    def measure(self, run: Run, boards: Boards, driver: DriverClient, manifest: Any, link: LinkSpec) -> None:
        cfg = self.config
        seq = driver.request(600.0, {'cmd': 'sequential', 'frames': cfg.sequential, 'timeout': 120.0})
        if 'error' in seq:
            raise BoardDiedError(f'sequential frames: {seq["error"]}')
        run.sequential = {'frames': len(seq['latency_ms']), 'latency_ms': _percentiles(seq['latency_ms'])}
        run.hops = hop_latencies(manifest, seq['diagnostics'], '/autodice', link)
        deadline = max(1.0, 3 * run.sequential['latency_ms']['p50'] / 1e3)
        rate = run.ideal['fps'] * 0.95
        lo: dict[str, Any] | None = None
        hi: float | None = None
        for _ in range(cfg.max_trials):
            trial = self.trial(run, boards, driver, rate, deadline)
            if trial['sustained']:
                lo = trial if lo is None or rate > lo['rate'] else lo
            else:     # overloaded, the output rate is about the capacity: no need to look above it
                hi = min(rate, max(trial['fps'] * 1.05, 0.05), hi or rate)
                if lo is not None and hi <= lo['rate']:
                    break
            if lo is not None and hi is not None and (hi - lo['rate']) / lo['rate'] <= 0.05:
                break
            if hi is None:
                rate *= 1.25
            elif lo is None:     # just under the output rate it managed (about its capacity);
                # a fixed 20 % step down spent a short run's trial well below the peak
                rate = min(rate * 0.95, max(trial['fps'], 0.05) * 0.97)
            else:
                rate = (lo['rate'] + hi) / 2
        if lo is None:
            # far below its ideal (a within-layer split waits for every board at each split
            # layer, which the pipeline model does not price): one frame in flight at a time
            # keeps up, so that rate is a measured lower bound rather than no figure at all
            floor = 0.9e3 / run.sequential['latency_ms']['p50']
            if hi is None or floor < hi:
                trial = self.trial(run, boards, driver, floor, deadline)
                if trial['sustained']:
                    lo = dict(trial, lower_bound=True)
        if lo is None:
            run.error = f'no sustained rate found in {len(run.trials)} trials'
            return
        run.peak = {k: lo[k] for k in ('rate', 'fps', 'drops', 'latency_ms', 'received', 'host_busy')}
        if lo.get('lower_bound'):
            run.peak['lower_bound'] = True
        self.account(run, lo, link)

    def trial(self, run: Run, boards: Boards, driver: DriverClient, rate: float,
              deadline: float) -> dict[str, Any]:
        """Frames at a fixed ``rate``: what came out, and each board's CPU time and link bytes."""
        cfg = self.config
        frames = max(cfg.trial_frames, int(rate * cfg.trial_seconds))
        before = {b: boards.usage(b) for b in boards.spec.names}
        host_before = host_cpu_times()
        raw = driver.request(600.0 + frames / rate * 4, {'cmd': 'rate', 'rate': rate, 'frames': frames,
                                                          'deadline': deadline, 'drain': deadline + 5.0})
        after = {b: boards.usage(b) for b in boards.spec.names}
        trial = _summarize_trial(raw)
        trial['host_busy'] = host_busy(host_before, host_cpu_times())
        trial['boards'] = {b: {'cpu_s': after[b].cpu_seconds - before[b].cpu_seconds,
                               'throttled_s': after[b].throttled_seconds - before[b].throttled_seconds,
                               'link': _link_dict(after[b].link - before[b].link)}
                           for b in boards.spec.names}
        run.trials.append(trial)
        self.log(f'  trial {rate:6.2f} fps in: {trial["fps"]:6.2f} out, drops {trial["drops"]:.0%}, '
                 f'p50 {trial["latency_ms"]["p50"]:.0f} ms, host {trial["host_busy"]:.0%} busy -> '
                 f'{"sustained" if trial["sustained"] else "not sustained"}')
        return trial

    def account(self, run: Run, trial: Mapping[str, Any], link: LinkSpec) -> None:
        frames = max(1, trial['received'])
        cpu_j = link_j = 0.0
        for board, data in trial['boards'].items():
            cpu_s = data['cpu_s'] / frames
            tx, rx = data['link']['tx_bytes'] / frames, data['link']['rx_bytes'] / frames
            entry = run.per_board.setdefault(board, {})
            entry.update({'cpu_s_per_frame': cpu_s, 'tx_bytes_per_frame': tx, 'rx_bytes_per_frame': rx})
            board_j = cpu_s * self.energy.board_watts(board)
            # a link's nJ/byte covers both ports: half to the sender's board, half to the receiver's
            wire_j = (tx + rx) / 2 * self.energy.link_nj(link.rate) * 1e-9
            entry['energy_j_per_frame'] = board_j + wire_j
            cpu_j += board_j
            link_j += wire_j
        run.energy_j_per_frame = {'cpu': cpu_j, 'link': link_j, 'total': cpu_j + link_j}
        if self.config.cpu:      # how close the busiest board ran to its quota at the peak
            busiest = max(run.per_board, key=lambda b: run.per_board[b].get('cpu_s_per_frame', 0.0))
            need = run.per_board[busiest]['cpu_s_per_frame']
            run.ideal['cpu_bound_fps'] = self.config.cpu / need if need else None
            run.ideal['busiest_board'] = busiest

    # -- the memory demonstration ----------------------------------------------------------------

    def demo_cases(self) -> list[DemoCase]:
        """The memory demonstration: the whole model and the partitioner's K-way plans, the
        within-layer K-way splits of ``demo_strategies`` (largest K), the memory-aware mappings
        (built in, and given), all at ``demo_memory``; then the whole model at
        ``demo_reference_memory`` (a reference, not part of the target)."""
        cfg = self.config
        limit = cfg.demo_memory
        cases = [DemoCase(f'layer_{k}', ['--boards', str(k)], [], limit) for k in cfg.demo_ks]
        if cfg.demo_ks and split_has_strategy():
            k = max(cfg.demo_ks)
            cases += [DemoCase(f'{st}_{k}', ['--boards', str(k), '--strategy', st], run_args(st), limit)
                      for st in cfg.demo_strategies]
        mappings = list(cfg.demo_mappings)
        if cfg.demo_model in DEMO_MAPPINGS and cfg.demo_ks:
            path = self.workdir / f'{cfg.demo_model}_memory_mapping.yaml'
            if not path.is_file() or path.read_text() != DEMO_MAPPINGS[cfg.demo_model]:
                path.write_text(DEMO_MAPPINGS[cfg.demo_model])
            mappings.append(path)
        cases += [DemoCase(f'mapping_{m.stem}', ['--mapping', str(m)], [], limit, source=m) for m in mappings]
        reference = cfg.demo_reference_memory
        if cfg.demo_ks and reference and reference != limit:
            cases.append(DemoCase('layer_1', ['--boards', '1'], [], reference, reference=True))
        return cases

    def memory_demo(self) -> list[dict[str, Any]]:
        from autodice_ros.manifest import load_bundle

        cfg = self.config
        results = []
        for case in self.demo_cases():
            label, how, extra, memory = case.label, case.how, case.run_args, case.memory
            entry: dict[str, Any] = {'model': cfg.demo_model, 'split': ' '.join(how),
                                     'memory_limit_mib': memory / 2**20 if memory else None}
            if case.reference:
                entry['reference'] = True
            try:
                bundle = self.bundle(cfg.demo_model, label, how, case.source)
            except AutodiceError as exc:
                entry.update(k=0, outcome='skipped', detail=str(exc))
                results.append(entry)
                continue
            manifest = load_bundle(bundle).manifest
            entry['k'] = len(manifest.boards)
            entry['partitions'] = {p.name: p.board for p in manifest.partitions}
            weights = {b: sum((bundle / p.file).stat().st_size for p in manifest.partitions if p.board == b)
                       for b in manifest.boards}
            spec = self.spec(manifest.boards, memory, LinkSpec(parse_rate('1gbit')))
            self.log(f'memory demo: {cfg.demo_model} {entry["split"]}: {entry["k"]} board(s) of '
                     f'{_mib(memory)}')
            left = drop_page_cache(bundle)
            entry['page_cache_left_mib'] = left / 2**20 if left >= 0 else None
            start = time.monotonic()
            log_name = f'memory-{label}{"-reference" if case.reference else ""}.log'
            with Boards(spec, log=self.log) as boards, open(self.logdir / log_name, 'w') as logfile:
                procs = boards.start_pipeline(bundle, ['--source', 'none', *extra], stdout=logfile,
                                              stderr=logfile)
                warm: dict[str, Any] = {}
                try:
                    # one try: a thrashing whole model may not connect in time either, and must
                    # not cost a second 200 s
                    driver = connect_driver(boards, bundle,
                                            thrash_watch(boards, weights, board_watch(boards, procs)),
                                            logfile, timeout=200.0, attempts=1)
                    warm = driver.request(700.0, {'cmd': 'warmup', 'frames': 1, 'interval': 5.0,
                                                  'timeout': 600.0})
                    if not warm.get('ok'):
                        raise BoardDiedError(f'warm-up: {warm.get("received")} of {warm.get("sent")} '
                                             f'frames came out')
                    seq = driver.request(300.0, {'cmd': 'sequential', 'frames': 3, 'timeout': 120.0})
                    if 'error' in seq:
                        raise BoardDiedError(seq['error'])
                    entry.update(outcome='ran', frames=len(seq['latency_ms']),
                                 latency_ms=_percentiles(seq['latency_ms']))
                    driver.request(30.0, {'cmd': 'quit'})
                except BoardDiedError as exc:
                    entry.update(outcome='failed', detail=str(exc),
                                 oom_killed=any(boards.oom_kills(b) for b in spec.names),
                                 thrashing='thrashing at its memory limit' in str(exc))
                entry['seconds'] = time.monotonic() - start
                entry['boards'] = {}
                page = os.sysconf('SC_PAGE_SIZE')
                for b in spec.names:
                    use, stat = boards.usage(b), boards.memory_stat(b)
                    entry['boards'][b] = {
                        'oom_kills': boards.oom_kills(b), 'failcnt': use.memory_failcnt,
                        'cgroup_peak_mib': use.memory_peak_bytes / 2**20,
                        # now (the survivors): anonymous, weights and other file pages, shared memory
                        'anon_mib': stat.get('total_rss', 0) / 2**20,
                        'file_mib': (stat.get('total_cache', 0) - stat.get('total_shmem', 0)) / 2**20,
                        'shmem_mib': stat.get('total_shmem', 0) / 2**20,
                        # file pages the limit pushed out and that were read back in: weights re-read
                        'reread_mib': stat.get('total_workingset_refault_file', 0) * page / 2**20,
                        'weights_mib': weights.get(b, 0) / 2**20,
                        'rss_peak_mib': sum(use.rss_peak_bytes.values()) / 2**20,
                        'stage_rss_peak_mib': sum(use.rss_peak_bytes.get(p, 0)
                                                  for p in _stage_pids(boards, b)) / 2**20,
                        'exit': procs[b].poll()}
                frames = int(warm.get('received', 0)) + int(entry.get('frames', 0))
                if entry['outcome'] == 'ran' and frames:
                    for values in entry['boards'].values():
                        values['reread_mib_per_frame'] = values['reread_mib'] / frames
            self.log(f'memory demo {entry["split"]}: {entry["outcome"]} {entry.get("detail", "")}')
            results.append(entry)
        return results


def drop_page_cache(bundle: Path) -> int:
    """Write back and evict ``bundle``'s files from the host's page cache; returns the bytes
    still cached (``mincore`` is not in Python: -1 where unknown).

    Sessions map the weights from the files (lean loading), and a cgroup v1 board is charged
    only for the pages it brings into the cache: weights cached by the split (or an earlier
    run) would be free for the board, and a board's memory limit would not count them.
    """
    for path in sorted(bundle.iterdir()):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    try:
        out = subprocess.run(['fincore', '--bytes', '--noheadings', '--raw', '--output', 'RES',
                              *(str(p) for p in bundle.iterdir() if p.is_file())],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1
    return sum(int(line) for line in out.split())


def _stage_pids(boards: Boards, board: str) -> set[int]:
    pids = set()
    for pid in boards.pids(board):
        try:
            if b'autodice_ros.nodes.stage' in Path(f'/proc/{pid}/cmdline').read_bytes():
                pids.add(pid)
        except OSError:
            continue
    return pids


def host_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host from /proc/stat."""
    fields = [int(x) for x in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)       # idle + iowait
    return sum(fields) - idle, sum(fields)


def host_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of the host's CPU time in use between two :func:`host_cpu_times` (everyone's:
    near 1.0 the boards competed with other work and did not get their quota)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def _link_dict(counters: LinkCounters) -> dict[str, int]:
    return {'tx_bytes': counters.tx_bytes, 'rx_bytes': counters.rx_bytes}


# VGG19 LOP on 3 boards, frames in flight -> peak fps (largest board's RSS): 1 -> 0.28 (799 MiB),
# 2 -> 0.44 (807), 3 -> 0.57 (890); no limit: nothing came through the connect probes
WITHIN_LAYER_IN_FLIGHT = 3


def run_args(strategy: str, one_process: bool = False, depth: int = 0,
             max_in_flight: int | None = None) -> list[str]:
    """``autodice run`` flags per strategy: a within-layer split puts many partitions on each
    board, so a board runs them in one process (``--in-process``), not one process each, and
    its camera head lets :data:`WITHIN_LAYER_IN_FLIGHT` frames in at once (its boards must work
    on the same frames: under overload they otherwise drop different ones and nothing comes
    out); ``one_process``: every board one process, camera head and tail included; ``depth``:
    the links' QoS depth (0: the plan's default), which bounds the frames a board holds;
    ``max_in_flight``: frames the camera head lets in at once (0: no limit; None: as above)."""
    if max_in_flight is None:
        max_in_flight = 0 if strategy == 'layer' else WITHIN_LAYER_IN_FLIGHT
    flags = ['--depth', str(depth)] if depth else []
    flags += ['--max-in-flight', str(max_in_flight)] if max_in_flight else []
    if one_process:
        return [*flags, '--one-process', 'true']
    return flags + ([] if strategy == 'layer' else ['--in-process', 'true'])


def split_has_strategy() -> bool:
    """Does ``autodice split`` take ``--strategy`` (issue 7's within-layer splitting)?"""
    import contextlib
    import io

    from autodice_ros import cli

    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        cli.main(['split', '--help'])
    return '--strategy' in text.getvalue()


# == targets and output ==========================================================================

def _find(runs: Sequence[Run], strategy: str, k: int, link: str | None = None) -> Run | None:
    for run in runs:
        if run.strategy == strategy and run.k == k and (link is None or run.link == link) and not run.error:
            return run
    return None


def targets(runs: Sequence[Run], demo: Sequence[Mapping[str, Any]], model: str,
            target_model: str) -> list[dict[str, Any]]:
    """The issue's targets, as ratios from this run; 'met' is None where nothing was measured."""
    out: list[dict[str, Any]] = []
    ratios = [h['hop_over_wire'] for r in runs for h in r.hops if h.get('hop_over_wire') is not None]
    worst = max(ratios) if ratios else None
    out.append({'target': 'board-to-board hop <= 1.2 x wire time (bytes / link rate)', 'limit': 1.2,
                'value': worst, 'met': worst <= 1.2 if worst is not None else None,
                'detail': 'worst hop over every shaped link measured: ' + ', '.join(
                    f"{r.strategy} K={r.k} {r.link} {h['edge']} {h['hop_ms']:.1f}/{h['wire_ms']:.1f} ms"
                    for r in runs for h in r.hops if h.get('hop_over_wire') is not None)})
    tput = [(r, r.peak['fps'] / r.ideal['fps']) for r in runs
            if r.peak and r.ideal.get('fps') and not r.peak.get('lower_bound')]
    bounds = [r for r in runs if r.peak.get('lower_bound')]
    lowest = min(tput, key=lambda x: x[1]) if tput else None
    out.append({'target': 'pipeline throughput >= 0.9 x ideal', 'limit': 0.9,
                'value': lowest[1] if lowest else None, 'met': lowest[1] >= 0.9 if lowest else None,
                'detail': '; '.join([f'{r.strategy} K={r.k} {r.link}: {r.peak["fps"]:.2f}/'
                                     f'{r.ideal["fps"]:.2f} fps = {ratio:.2f}' for r, ratio in tput]
                                    + [f'{r.strategy} K={r.k} {r.link}: no peak found, at least '
                                       f'{r.peak["fps"]:.2f} fps (one frame in flight), not judged'
                                       for r in bounds])})
    single = _find(runs, 'layer', 1)
    three = _find(runs, 'layer', 3, '1gbit')
    value = (three.peak['fps'] / single.peak['fps']
             if single and three and single.peak and three.peak and model == target_model else None)
    out.append({'target': f'{target_model} on 3 boards (1 Gbit/s) >= 2.5 x the fps of one board',
                'limit': 2.5, 'value': value, 'met': value >= 2.5 if value is not None else None,
                'detail': (f'{three.peak["fps"]:.2f} vs {single.peak["fps"]:.2f} fps'
                           if value is not None and three and single
                           else f'needs {target_model} K=1 and K=3 at 1gbit')})
    rss_rows = []
    if single and single.per_board:
        base = sum(b.get('rss_peak_mb', 0.0) for b in single.per_board.values())
        for run in runs:
            if run.k > 1 and run.per_board and not run.error:
                worst_board = max(run.per_board.items(), key=lambda kv: kv[1].get('rss_peak_mb', 0.0))
                rss_rows.append((run, worst_board[0], worst_board[1].get('rss_peak_mb', 0.0) / base,
                                 1 / run.k + 0.1))
    met = all(r <= lim for _, _, r, lim in rss_rows) if rss_rows else None
    worst_rss = max(rss_rows, key=lambda row: row[2] - row[3]) if rss_rows else None
    out.append({'target': 'per-board peak RSS <= (1/K + 0.1) x single (largest board)',
                'limit': round(worst_rss[3], 3) if worst_rss else '1/K + 0.1',
                'value': worst_rss[2] if worst_rss else None, 'met': met,
                'detail': '; '.join(f'{run.strategy} K={run.k} {run.link}: {board} {ratio:.2f} '
                                    f'(limit {lim:.2f})' for run, board, ratio, lim in rss_rows)})
    demo = [d for d in demo if not d.get('reference')]
    whole = next((d for d in demo if d['k'] == 1), None)
    splits = [d for d in demo if d['k'] > 1]
    ran = [d for d in splits if d['outcome'] == 'ran']
    failed = bool(whole and whole['outcome'] == 'failed'
                  and (whole.get('oom_killed') or whole.get('thrashing')))
    shown = failed and bool(ran)
    out.append({'target': 'memory limit per board: whole model fails on one board, runs split',
                'limit': None, 'value': None, 'met': shown if whole and splits else None,
                'detail': '; '.join(f"{d['split']} on {d['k']} board(s) of {d['memory_limit_mib']:.0f} MiB: "
                                    f"{d['outcome']} {d.get('detail', '')}{_rereads(d)}".strip()
                                    for d in demo if d['k'])})
    return out


def _rereads(demo: Mapping[str, Any]) -> str:
    """'; weights re-read a frame: board2 480 MiB' for a demo case that ran while paging weights
    back in, else ''."""
    heavy = {b: v['reread_mib_per_frame'] for b, v in demo.get('boards', {}).items()
             if v.get('reread_mib_per_frame', 0) >= 1}
    return ('; weights re-read a frame: ' + ', '.join(f'{b} {mib:.0f} MiB' for b, mib in heavy.items())
            if heavy else '')


def best_within_layer(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per (K, link): the within-layer strategy with the highest peak fps, next to layer-wise."""
    best: dict[tuple[int, str], Run] = {}
    for run in runs:
        if run.strategy != 'layer' and run.peak and not run.error:
            key = (run.k, run.link)
            if key not in best or run.peak['fps'] > best[key].peak['fps']:
                best[key] = run
    rows = []
    for (k, link), run in sorted(best.items()):
        layer = _find(runs, 'layer', k, link)
        rows.append({'k': k, 'link': link, 'strategy': run.strategy, 'fps': run.peak['fps'],
                     'layer_fps': layer.peak['fps'] if layer and layer.peak else None})
    return rows


def markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# autodice bench boards: {report['model']}", '',
             f"Host: {report['host']['cores']} cores, load average {report['host']['load_before']} before / "
             f"{report['host']['load_after']} after. Boards: {report['settings']['cpu']} core each. "
             'Timings on a shared host are not representative; compare rows of one run. '
             'Ideal: the slowest board (its stages alone, CPU time / quota) or the busiest link. '
             'Quota-bound: the quota over the busiest board\'s CPU seconds per frame at the peak '
             '(everything its processes do: camera head, stages, tail, DDS). Host busy: the whole '
             'machine\'s CPU use during the peak trial; near 100 % the boards did not get their quota.', '',
             '| strategy | K | link | ideal fps | quota-bound fps | peak fps | fps/ideal | p50 ms | p90 ms | '
             'p99 ms | worst hop/wire | max board RSS MiB | CPU s/frame | link MB/frame | energy J/frame | '
             'host busy |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for run in report['runs']:
        if run['error']:
            lines.append(f"| {run['strategy']} | {run['k']} | {run['link']} | | | | | | | | | | | | | "
                         f"{run['error'][:80]} |")
            continue
        lat = run['peak'].get('latency_ms', {})
        hops = [h['hop_over_wire'] for h in run['hops'] if h.get('hop_over_wire') is not None]
        boards = run['per_board'].values()
        fps = run['peak'].get('fps', 0.0)
        at_least = '>= ' if run['peak'].get('lower_bound') else ''
        lines.append(
            f"| {run['strategy']} | {run['k']} | {run['link']} | {run['ideal']['fps']:.2f} | "
            f"{run['ideal'].get('cpu_bound_fps') or float('nan'):.2f} | {at_least}{fps:.2f} | "
            f"{fps / run['ideal']['fps']:.2f} | "
            f"{lat.get('p50', float('nan')):.0f} | {lat.get('p90', float('nan')):.0f} | "
            f"{lat.get('p99', float('nan')):.0f} | {max(hops) if hops else float('nan'):.2f} | "
            f"{max((b.get('rss_peak_mb', 0) for b in boards), default=0):.0f} | "
            f"{sum(b.get('cpu_s_per_frame', 0) for b in boards):.3f} | "
            f"{sum(b.get('tx_bytes_per_frame', 0) for b in boards) / 1e6:.2f} | "
            f"{run['energy_j_per_frame'].get('total', float('nan')):.3f} | "
            f"{run['peak'].get('host_busy', float('nan')):.0%} |")
    if report.get('best_within_layer'):
        lines += ['', 'Best within-layer strategy per K and link (peak fps; layer-wise for comparison): '
                  + '; '.join(f"K={b['k']} {b['link']}: {b['strategy']} {b['fps']:.2f}"
                              + (f" vs layer {b['layer_fps']:.2f}" if b['layer_fps'] else '')
                              for b in report['best_within_layer'])]
    lines += ['', '## Memory limit per board', '']
    lines.append('Each board is charged for the weights it reads (the bundle is evicted from the page '
                 'cache first). Re-read: weights the limit pushed out of memory and the board read back '
                 'from the file -- slower frames, not an OOM kill; on a board\'s SD card or eMMC far slower '
                 'than on this host.')
    lines.append('')
    for demo in report['memory_demo']:
        peaks = ', '.join(f"{b} {v['cgroup_peak_mib']:.0f} MiB" for b, v in demo.get('boards', {}).items())
        limit = f"{demo['memory_limit_mib']:.0f} MiB" if demo['memory_limit_mib'] else 'no memory limit'
        latency = demo.get('latency_ms', {}).get('p50')
        said = ' '.join(part for part in (f'({latency:.0f} ms a frame)' if latency else '',
                                          demo.get('detail', '')) if part)
        lines.append(f"- {'reference: ' if demo.get('reference') else ''}{demo['model']} "
                     f"`split {demo['split']}` on {demo['k']} board(s) of {limit}: "
                     f"**{demo['outcome']}** {said}{_rereads(demo)}"
                     f"{f' (cgroup peaks: {peaks})' if peaks else ''}")
    lines += ['', '## Targets', '', '| target | value | limit | met |', '|---|---|---|---|']
    for tgt in report['targets']:
        value = tgt['value']
        shown = f'{value:.2f}' if isinstance(value, float) else ('-' if value is None else str(value))
        met = {True: 'yes', False: '**no**', None: 'not measured'}[tgt['met']]
        limit = tgt['limit'] if tgt['limit'] is not None else ''
        lines.append(f"| {tgt['target']} | {shown} | {limit} | {met} |")
    lines += ['', 'Details:', ''] + [f"- {t['target']}: {t['detail']}" for t in report['targets']]
    lines += ['', f"Energy model: {report['energy_model']}", '']
    return '\n'.join(lines)


def plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = [r for r in report['runs'] if not r['error'] and r['peak']]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        link = run['link'] if run['k'] > 1 else 'all'
        groups.setdefault((run['strategy'], link), []).append(run)
    singles = [r for r in runs if r['k'] == 1]
    for (strategy, link), rows in groups.items():
        if link == 'all':
            continue
        rows = sorted(singles + rows, key=lambda r: r['k'])
        ks = [r['k'] for r in rows]
        label = f'{strategy}, {link}'
        axes[0][0].plot(ks, [r['peak']['fps'] for r in rows], marker='o', label=label)
        axes[0][0].plot(ks, [r['ideal']['fps'] for r in rows], linestyle=':', color='grey')
        (p50,) = axes[0][1].plot(ks, [r['peak']['latency_ms']['p50'] for r in rows], marker='o',
                                 label=f'{label} p50')
        axes[0][1].plot(ks, [r['peak']['latency_ms']['p99'] for r in rows], marker='x', linestyle='--',
                        color=p50.get_color(), label=f'{label} p99')
        axes[1][0].plot(ks, [max(b.get('rss_peak_mb', 0) for b in r['per_board'].values()) for r in rows],
                        marker='o', label=label)
        axes[1][1].plot(ks, [r['energy_j_per_frame']['total'] for r in rows], marker='o', label=label)
    if singles:
        base = max(b.get('rss_peak_mb', 0) for b in singles[0]['per_board'].values())
        ks = sorted({r['k'] for r in runs})
        axes[1][0].plot(ks, [base * (1 / k + 0.1) for k in ks], color='k', linestyle='--',
                        label='target (1/K + 0.1) x single')
    titles = [('peak fps (dotted: ideal)', 'fps'), ('latency at the peak rate', 'ms'),
              ('largest board: peak RSS', 'MiB'), ('energy estimate per frame', 'J')]
    all_ks = sorted({r['k'] for r in runs})
    for ax, (title, unit) in zip(axes.flat, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel('boards (K)')
        ax.set_xticks(all_ks)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']} on emulated boards ({report['settings']['cpu']} core each)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = log or (lambda text: print(f'[bench boards] {text}', file=sys.stderr, flush=True))
    bench = Bench(config, say)
    load_before = os.getloadavg()
    started = time.monotonic()
    runs: list[Run] = []
    for strategy in config.strategies:
        for k in config.ks:
            if k == 1 and strategy != 'layer':
                continue
            runs += bench.run_config(strategy, k)
    demo = bench.memory_demo() if config.demo_ks else []
    report: dict[str, Any] = {
        'benchmark': 'boards', 'model': config.model,
        'host': {'cores': os.cpu_count(), 'load_before': [round(x, 2) for x in load_before],
                 'load_after': [round(x, 2) for x in os.getloadavg()],
                 'seconds': round(time.monotonic() - started, 1)},
        'settings': {'cpu': config.cpu, 'memory': config.memory, 'links': list(config.links),
                     'ks': list(config.ks), 'strategies': list(config.strategies),
                     'one_process': config.one_process, 'depth': config.depth or None,
                     'max_in_flight': config.max_in_flight,
                     'sustained': f'< {SUSTAINED_DROPS:.0%} lost or late, output rate >= '
                                  f'{KEEP_PACE:.0%} of input rate'},
        'energy_model': bench.energy.source,
        'runs': [run.__dict__ for run in runs],
        'memory_demo': demo,
    }
    report['best_within_layer'] = best_within_layer(runs)
    report['targets'] = targets(runs, demo, config.model, config.target_model)
    out = config.out
    (out / 'bench-boards.json').write_text(json.dumps(report, indent=2, default=_json_default) + '\n')
    (out / 'bench-boards.md').write_text(markdown(report))
    plot(report, out / 'bench-boards.png')
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """``autodice bench boards`` flags -> :class:`BenchConfig` (``--short`` first, flags on top)."""
    changes: dict[str, Any] = {'out': args.out, 'model': args.model, 'boards_config': args.config,
                               'energy_config': args.energy}
    if args.ks:
        changes['ks'] = tuple(int(k) for k in args.ks.split(','))
    if args.links:
        changes['links'] = tuple(args.links.split(','))
    if args.strategies:
        changes['strategies'] = tuple(args.strategies.split(','))
    if args.cpu is not None:
        changes['cpu'] = None if args.cpu.lower() == 'none' else float(args.cpu)
    if args.memory is not None:
        changes['memory'] = parse_bytes(args.memory, '--memory')
    if args.demo_memory is not None:
        changes['demo_memory'] = parse_bytes(args.demo_memory, '--demo-memory')
    if args.no_demo:
        changes['demo_ks'] = ()
    if args.demo_only:
        if args.no_demo:
            raise BoardsError('--demo-only and --no-demo leave nothing to run; pick one')
        changes['strategies'] = ()
    if args.one_process:
        changes['one_process'] = True
    if args.depth is not None:
        if args.depth < 1:
            raise BoardsError(f'--depth {args.depth}: a QoS depth is at least 1')
        changes['depth'] = args.depth
    if args.max_in_flight is not None:
        if args.max_in_flight < 0:
            raise BoardsError(f'--max-in-flight {args.max_in_flight}: 0 (no limit) or more')
        changes['max_in_flight'] = args.max_in_flight
    if args.demo_model:
        changes['demo_model'] = args.demo_model
    if args.demo_mapping:
        changes['demo_mappings'] = tuple(args.demo_mapping)
    return BenchConfig.short(**changes) if args.short else replace(BenchConfig(), **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default='vgg19', help='zoo model name or ONNX path (default vgg19)')
    parser.add_argument('--ks', help='comma list of board counts (default 1,2,3,4; --short: 1,3)')
    parser.add_argument('--links', help='comma list of link rates (default 100mbit,1gbit,unshaped)')
    parser.add_argument('--strategies', help="comma list: layer and `autodice split --strategy` names "
                                             "(lop, lip, height, width, hybrid; default layer,lop,hybrid; "
                                             "--short: layer)")
    parser.add_argument('--cpu', help='cores per board (default 0.5)')
    parser.add_argument('--memory', help='memory limit per board for the throughput runs (default none)')
    parser.add_argument('--one-process', action='store_true',
                        help='throughput runs with each board one process: its camera head, stages '
                             'and tail together (the plan option one_process)')
    parser.add_argument('--depth', type=int,
                        help="throughput runs with this QoS depth on every link (the plan option "
                             "depth; default: the plan's, 10): the frames a board may hold")
    parser.add_argument('--max-in-flight', type=int,
                        help='throughput runs with the camera head letting at most this many frames '
                             'into the pipeline at once (the plan option max_in_flight; 0: no limit; '
                             f'default: {WITHIN_LAYER_IN_FLIGHT} for within-layer splits, no limit for '
                             'layer-wise)')
    parser.add_argument('--demo-memory', help='memory limit per board in the memory demo (default 576MiB: '
                                              'whole vgg19 thrashes or is OOM-killed, the built-in mapping '
                                              'runs; without --short, the whole model also at 1GiB)')
    parser.add_argument('--demo-model', help='model of the memory demo (default vgg19)')
    parser.add_argument('--demo-mapping', type=Path, action='append', default=[],
                        help='also run the memory demo with this mapping (repeat; vgg19 has one built in)')
    parser.add_argument('--no-demo', action='store_true', help='skip the memory demonstration')
    parser.add_argument('--demo-only', action='store_true',
                        help='only the memory demonstration (no throughput runs; --ks, --links and '
                             '--strategies then do not apply)')
    parser.add_argument('--config', type=Path, help='boards YAML (default: the shipped boards.yaml)')
    parser.add_argument('--energy', type=Path, help='energy model YAML (default: the shipped energy.yaml)')
    parser.add_argument('--short', action='store_true', help='K=1,3 at 1gbit and 100mbit, fewer trials')
    parser.add_argument('-o', '--out', type=Path, default=Path('bench-results'), help='output directory')


def main(argv: Sequence[str]) -> int:
    roles = {'driver': _driver, 'stages': _stages}
    if not argv or argv[0] not in roles:
        raise SystemExit(f'usage: python -m autodice_ros.bench.boards {"|".join(roles)} ...')
    return roles[argv[0]](argv[1:])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

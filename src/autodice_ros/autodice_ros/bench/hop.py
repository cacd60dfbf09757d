"""``autodice bench hop``: one-way latency of one tensor hop between two processes.

For each transport set-up and payload size a publisher sends ``count`` float32 tensors at 10 Hz
to a subscriber; latency runs from just before ``publish`` (the arrays already in hand, encoding
included) to the subscriber's callback (decoding included). The same run measures one memcpy of
the payload, so set-ups compare as ratios across machines.

A set-up (see :data:`SETUPS`) is a process environment (DDS profile, malloc tunables), whether the
fast path is on (``fast_path`` parameter), and whether publisher and subscriber share a process.
The peers are ``python -m autodice_ros.bench.hop pub|sub|both``; the subscriber reports which
path each frame took, so a set-up cannot silently measure another.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.environment import MALLOC_TUNABLES, PROFILE_VAR, profile_path

TOPIC = 'autodice_bench/hop'
DEFAULT_SIZES_MB = (0.6, 3.2, 12.8)
RATE_HZ = 10.0


def shape_for(megabytes: float) -> tuple[int, ...]:
    """A VGG-like activation shape (1, C, H, W) of about ``megabytes`` MB of float32."""
    elements = int(megabytes * 1e6 / 4)
    channels = 64
    side = max(1, int(round((elements / channels) ** 0.5)))
    return (1, channels, side, side)


@dataclass(frozen=True)
class Setup:
    profile: str          # '' (Fast DDS defaults), 'board' or 'network': the shipped XML profiles
    fast_path: bool       # shared memory between processes / hand-off inside one
    in_process: bool = False
    lend: bool = False    # the producer writes into a borrowed slot (as stages do): no copy
    help: str = ''

    @property
    def mode(self) -> str:
        """How the peers are told (their command line): off, on or lend."""
        return 'lend' if self.lend else 'on' if self.fast_path else 'off'


SETUPS: dict[str, Setup] = {
    'default': Setup('', False, help='Fast DDS defaults, TensorList payload'),
    'shipped': Setup('board', False, help='shipped board profile + malloc tunables, TensorList payload'),
    'network': Setup('network', False, help='shipped network profile (LARGE_DATA), TensorList payload'),
    'fastpath': Setup('board', True, help='shared-memory slots + descriptor over DDS, two processes; '
                      'publish copies the arrays into a slot'),
    'lent': Setup('board', True, lend=True,
                  help='the same, the producer writing into a borrowed slot (as a stage has ONNX '
                       'Runtime do): no copy'),
    'inprocess': Setup('board', True, True, help='publisher and subscriber in one process: no copy'),
}
DEFAULT_SETUPS = ('default', 'shipped', 'fastpath', 'lent', 'inprocess')


def setup_env(name: str, base: Mapping[str, str]) -> dict[str, str]:
    """The process environment of a transport set-up."""
    if name not in SETUPS:
        raise ValueError(f'unknown hop set-up {name!r}; expected one of {", ".join(SETUPS)}')
    env = dict(base)
    for var in (PROFILE_VAR, 'FASTRTPS_DEFAULT_PROFILES_FILE', 'GLIBC_TUNABLES',
                'FASTDDS_BUILTIN_TRANSPORTS'):
        env.pop(var, None)
    profile = SETUPS[name].profile
    if profile:
        env['GLIBC_TUNABLES'] = MALLOC_TUNABLES
        env[PROFILE_VAR] = str(profile_path(profile))
    return env


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float('nan')


def memcpy_ms(nbytes: int, repeat: int = 30) -> float:
    """Median time of one copy of ``nbytes`` between two warm buffers."""
    src = np.random.default_rng(0).random(nbytes // 8 + 1)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- the peers ----------------------------------------------------------------------------------

def _init(mode: str) -> Any:
    import rclpy

    from autodice_ros.executor import make_executor

    rclpy.init(args=['hop', '--ros-args', '-p', f'fast_path:={str(mode != "off").lower()}'])
    return make_executor()     # what the nodes spin with (AUTODICE_EXECUTOR)


IDLE_WAKE_S = 0.1     # the longest wait without an event: peers sleep until a message comes, as
                      # a node in rclpy.spin does. (They polled every 5 ms before, which keeps CPUs
                      # warm: 3.2 MB fast path p50 1.01-1.30 ms polling, 1.19-1.28 waiting, 3 runs)


def _spin(executor: Any, seconds: float, done: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        executor.spin_once(timeout_sec=min(remaining, IDLE_WAKE_S))
    return True


def _send(executor: Any, sizes: Sequence[float], count: int, warmup: int, lend: bool) -> int:
    import rclpy

    from autodice_ros.codec import TensorPublisher, qos_profile
    from autodice_ros.rosutil import now_header

    node = rclpy.create_node('hop_pub')
    executor.add_node(node)
    pub = TensorPublisher(node, TOPIC, qos_profile('reliable', depth=2))
    if not _spin(executor, 30.0, lambda: pub.get_subscription_count() > 0):
        print('hop pub: no subscriber matched within 30 s', file=sys.stderr)
        return 1
    _spin(executor, 0.5)     # let the other endpoints of the subscriber match too
    frame = 0
    for mb in sizes:
        payload = np.random.default_rng(1).random(shape_for(mb), dtype=np.float32)
        for _ in range(warmup + count):
            tensors = {'x': payload}
            slot = pub.borrow() if lend else None
            if slot is not None and slot['x'].shape == payload.shape:   # (not a size's first frame)
                np.copyto(slot['x'], payload)    # the producer's own writing, before the clock
                tensors = slot
            header = now_header(f'{mb}')
            pub.publish(header, frame, tensors)
            frame += 1
            _spin(executor, 1.0 / RATE_HZ)
    return 0


def _receiver(executor: Any) -> tuple[list[tuple[str, int, float]], list[str], Any]:
    import rclpy

    from autodice_ros.codec import Frame, TensorSubscriber, qos_profile
    from autodice_ros.rosutil import stamp_ns

    node = rclpy.create_node('hop_sub')
    executor.add_node(node)
    samples: list[tuple[str, int, float]] = []
    errors: list[str] = []

    def on_frame(topic: str, frame: Frame) -> None:
        latency_ms = (time.time_ns() - stamp_ns(frame.header)) / 1e6
        samples.append((frame.header.frame_id, frame.frame, latency_ms))

    sub = TensorSubscriber(node, TOPIC, qos_profile('reliable', depth=2), None, on_frame,
                           lambda topic, exc: errors.append(str(exc)))
    return samples, errors, sub


def _report(samples: list[tuple[str, int, float]], errors: list[str], sub: Any) -> None:
    json.dump({'samples': samples, 'errors': errors, 'paths': dict(sub.received),
               'drops': dict(sub.drops)}, sys.stdout)


def _publisher(sizes: Sequence[float], count: int, warmup: int, mode: str) -> int:
    import rclpy

    try:
        return _send(_init(mode), sizes, count, warmup, mode == 'lend')
    finally:
        rclpy.try_shutdown()


def _subscriber(total: int, timeout: float, mode: str) -> int:
    import rclpy

    executor = _init(mode)
    try:
        samples, errors, sub = _receiver(executor)
        _spin(executor, timeout, lambda: len(samples) >= total)
        _report(samples, errors, sub)
    finally:
        rclpy.try_shutdown()
    return 0


def _both(sizes: Sequence[float], count: int, warmup: int, mode: str) -> int:
    """Publisher and subscriber nodes in one process, one executor."""
    import rclpy

    executor = _init(mode)
    try:
        samples, errors, sub = _receiver(executor)
        status = _send(executor, sizes, count, warmup, mode == 'lend')
        _spin(executor, 1.0, lambda: len(samples) >= len(sizes) * (warmup + count))
        _report(samples, errors, sub)
    finally:
        rclpy.try_shutdown()
    return status


# -- orchestration --------------------------------------------------------------------------------

def run_setup(name: str, sizes: Sequence[float], count: int, warmup: int,
              base_env: Mapping[str, str]) -> dict[str, Any]:
    """Run one set-up; per size: p50/p99 latency (ms), messages received; the paths frames took."""
    setup = SETUPS[name]
    env = setup_env(name, base_env)
    total = len(sizes) * (warmup + count)
    timeout = 30.0 + total / RATE_HZ * 4
    cmd = [sys.executable, '-m', 'autodice_ros.bench.hop']
    fast = setup.mode
    send_args = [','.join(map(str, sizes)), str(count), str(warmup), fast]
    if setup.in_process:
        out = subprocess.run([*cmd, 'both', *send_args], env=env, stdout=subprocess.PIPE, text=True,
                             timeout=timeout + 30).stdout
    else:
        sub = subprocess.Popen([*cmd, 'sub', str(total), str(timeout), fast], env=env,
                               stdout=subprocess.PIPE, text=True)
        pub = subprocess.Popen([*cmd, 'pub', *send_args], env=env)
        pub.wait(timeout=timeout + 30)
        out, _ = sub.communicate(timeout=timeout + 30)
    data = json.loads(out or '{"samples": [], "errors": ["subscriber printed nothing"]}')
    result: dict[str, Any] = {'help': setup.help, 'paths': data.get('paths', {})}
    for index, mb in enumerate(sizes):
        first = index * (warmup + count) + warmup
        last = (index + 1) * (warmup + count)
        lat = [ms for _, frame, ms in data['samples'] if first <= frame < last]
        result[f'{mb}MB'] = {'p50_ms': percentile(lat, 50), 'p99_ms': percentile(lat, 99),
                             'received': len(lat), 'sent': count}
    if data.get('drops'):
        result['drops'] = data['drops']
    if data['errors']:
        result['errors'] = data['errors'][:5]
    return result


TARGET = ('lent', '3.2MB', 8.0)    # set-up (what stages do), size, p50 at most this many same-run memcpys


def run(sizes: Sequence[float] = DEFAULT_SIZES_MB, setups: Sequence[str] = DEFAULT_SETUPS,
        count: int = 30, warmup: int = 5, out: Path | None = None) -> dict[str, Any]:
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        raise ValueError(f'unknown hop set-up(s) {", ".join(unknown)}; expected: {", ".join(SETUPS)}')
    report: dict[str, Any] = {
        'benchmark': 'hop',
        'definition': 'one-way latency, publisher arrays in hand -> subscriber callback with arrays',
        'rate_hz': RATE_HZ, 'count': count, 'cores': os.cpu_count(),
        'discovery_range': os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET (default)'),
        'memcpy_ms': {f'{mb}MB': memcpy_ms(int(np.prod(shape_for(mb))) * 4) for mb in sizes},
        'setups': {},
    }
    for name in setups:
        report['setups'][name] = run_setup(name, sizes, count, warmup, os.environ)
    for res in report['setups'].values():
        for key, row in res.items():
            if isinstance(row, dict) and 'p50_ms' in row and row['p50_ms'] == row['p50_ms']:
                row['p50_over_memcpy'] = row['p50_ms'] / report['memcpy_ms'][key]
    setup, size, limit = TARGET
    row = report['setups'].get(setup, {}).get(size)
    if row is not None and 'p50_over_memcpy' in row:
        report['target'] = {'what': f'{setup} {size} p50 <= {limit:g} x same-run memcpy',
                            'ratio': row['p50_over_memcpy'], 'met': row['p50_over_memcpy'] <= limit}
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + '\n')
    return report


def main(argv: Sequence[str]) -> int:
    role, args = argv[0], argv[1:]
    if role in ('pub', 'both'):
        sizes = [float(x) for x in args[0].split(',')]
        peer = _publisher if role == 'pub' else _both
        return peer(sizes, int(args[1]), int(args[2]), args[3])
    if role == 'sub':
        return _subscriber(int(args[0]), float(args[1]), args[2])
    raise SystemExit(f'usage: python -m autodice_ros.bench.hop pub|sub|both ...; got {role!r}')


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

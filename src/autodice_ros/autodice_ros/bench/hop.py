"""``autodice bench hop``: one-way latency of one tensor hop between two processes.

For each transport set-up and payload size a publisher process sends ``count`` float32 tensors
at 10 Hz to a subscriber process; latency runs from just before ``publish`` (the arrays already
in hand, encoding included) to the subscriber's callback (decoding included). The same run
measures one memcpy of the payload, so set-ups compare as ratios across machines.

Each set-up is a process environment (see :data:`SETUPS`); the peers are
``python -m autodice_ros.bench.hop pub|sub``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
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


def setup_env(name: str, base: Mapping[str, str]) -> dict[str, str]:
    """The process environment of a transport set-up."""
    env = dict(base)
    for var in (PROFILE_VAR, 'FASTRTPS_DEFAULT_PROFILES_FILE', 'GLIBC_TUNABLES',
                'FASTDDS_BUILTIN_TRANSPORTS'):
        env.pop(var, None)
    if name == 'default':
        return env
    env['GLIBC_TUNABLES'] = MALLOC_TUNABLES
    if name == 'shipped':
        env[PROFILE_VAR] = str(profile_path('board'))
    elif name == 'network':
        env[PROFILE_VAR] = str(profile_path('network'))
    else:
        raise ValueError(f'unknown hop set-up {name!r}; expected one of {", ".join(SETUPS)}')
    return env


SETUPS = ('default', 'shipped', 'network')


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


# -- the two peers ------------------------------------------------------------------------------

def _publisher(sizes: Sequence[float], count: int, warmup: int) -> int:
    import rclpy

    from autodice_ros.codec import TensorPublisher, qos_profile
    from autodice_ros.rosutil import now_header, spin_until, wait_for_subscribers

    rclpy.init()
    node = rclpy.create_node('hop_pub')
    pub = TensorPublisher(node, TOPIC, qos_profile('reliable', depth=2))
    if not wait_for_subscribers(node, [pub], timeout=30.0):
        print('hop pub: no subscriber matched within 30 s', file=sys.stderr)
        return 1
    frame = 0
    for mb in sizes:
        payload = np.random.default_rng(1).random(shape_for(mb), dtype=np.float32)
        for _ in range(warmup + count):
            header = now_header(f'{mb}')
            pub.publish(header, frame, {'x': payload})
            frame += 1
            spin_until(node, lambda: False, timeout=1.0 / RATE_HZ)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _subscriber(total: int, timeout: float) -> int:
    import rclpy

    from autodice_ros.codec import Frame, TensorSubscriber, qos_profile
    from autodice_ros.rosutil import spin_until, stamp_ns

    rclpy.init()
    node = rclpy.create_node('hop_sub')
    samples: list[tuple[str, int, float]] = []
    errors: list[str] = []

    def on_frame(topic: str, frame: Frame) -> None:
        latency_ms = (time.time_ns() - stamp_ns(frame.header)) / 1e6
        samples.append((frame.header.frame_id, frame.frame, latency_ms))

    TensorSubscriber(node, TOPIC, qos_profile('reliable', depth=2), None, on_frame,
                     lambda topic, exc: errors.append(str(exc)))
    spin_until(node, lambda: len(samples) >= total, timeout=timeout, step=0.01)
    json.dump({'samples': samples, 'errors': errors}, sys.stdout)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# -- orchestration --------------------------------------------------------------------------------

def run_setup(name: str, sizes: Sequence[float], count: int, warmup: int,
              base_env: Mapping[str, str]) -> dict[str, Any]:
    """Run one set-up; per size: p50/p99 latency (ms), messages received."""
    env = setup_env(name, base_env)
    total = len(sizes) * (warmup + count)
    timeout = 30.0 + total / RATE_HZ * 4
    cmd = [sys.executable, '-m', 'autodice_ros.bench.hop']
    sub = subprocess.Popen([*cmd, 'sub', str(total), str(timeout)], env=env,
                           stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen([*cmd, 'pub', ','.join(map(str, sizes)), str(count), str(warmup)], env=env)
    pub.wait(timeout=timeout + 30)
    out, _ = sub.communicate(timeout=timeout + 30)
    data = json.loads(out or '{"samples": [], "errors": ["subscriber printed nothing"]}')
    result: dict[str, Any] = {}
    for index, mb in enumerate(sizes):
        first = index * (warmup + count) + warmup
        last = (index + 1) * (warmup + count)
        lat = [ms for _, frame, ms in data['samples'] if first <= frame < last]
        result[f'{mb}MB'] = {'p50_ms': percentile(lat, 50), 'p99_ms': percentile(lat, 99),
                             'received': len(lat), 'sent': count}
    if data['errors']:
        result['errors'] = data['errors'][:5]
    return result


def run(sizes: Sequence[float] = DEFAULT_SIZES_MB, setups: Sequence[str] = ('default', 'shipped'),
        count: int = 30, warmup: int = 5, out: Path | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        'benchmark': 'hop',
        'definition': 'one-way latency, publisher arrays in hand -> subscriber callback with arrays',
        'rate_hz': RATE_HZ, 'count': count,
        'discovery_range': os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET (default)'),
        'memcpy_ms': {f'{mb}MB': memcpy_ms(int(np.prod(shape_for(mb))) * 4) for mb in sizes},
        'setups': {},
    }
    for name in setups:
        report['setups'][name] = run_setup(name, sizes, count, warmup, os.environ)
    for res in report['setups'].values():
        for key, row in res.items():
            if isinstance(row, dict) and row.get('p50_ms') == row.get('p50_ms'):
                row['p50_over_memcpy'] = row['p50_ms'] / report['memcpy_ms'][key]
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + '\n')
    return report


def main(argv: Sequence[str]) -> int:
    role = argv[0]
    if role == 'pub':
        return _publisher([float(s) for s in argv[1].split(',')], int(argv[2]), int(argv[3]))
    if role == 'sub':
        return _subscriber(int(argv[1]), float(argv[2]))
    raise SystemExit(f'usage: python -m autodice_ros.bench.hop pub|sub ...; got {role!r}')


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

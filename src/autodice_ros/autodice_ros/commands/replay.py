"""``autodice replay BUNDLE --bag IN --out OUT``: a bag's images through the pipeline, results to a bag."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autodice_ros.bags import STORAGES
from autodice_ros.replay import replay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bundle', type=Path, help='deployment bundle directory')
    parser.add_argument('--bag', type=Path, required=True, help='input rosbag2 (sqlite3 or mcap)')
    parser.add_argument('--out', type=Path, required=True, help='output rosbag2 directory (must not exist)')
    parser.add_argument('--topic', help='image topic in the bag (default: its only Image topic)')
    parser.add_argument('--storage', choices=STORAGES, default='sqlite3', help='output storage')
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument('--rate', type=float, help='play at this many images per second')
    timing.add_argument('--fast', action='store_true', help='as fast as the pipeline takes them')
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds to wait for the last result')
    parser.add_argument('--namespace', default='/autodice', help='namespace of the pipeline')


def run(args: argparse.Namespace) -> int:
    timing = 'fast' if args.fast else 'rate' if args.rate else 'recorded'
    result = replay(args.bundle, args.bag, args.out, storage=args.storage, topic=args.topic,
                    timing=timing, rate=args.rate or 0.0, timeout=args.timeout, namespace=args.namespace)
    fps = result.received / result.seconds if result.seconds else 0.0
    print(f'replayed {result.sent} images: {result.received} results in {result.seconds:.1f} s '
          f'({fps:.1f} fps), latency p50 {result.latency_p50_ms:.1f} ms, '
          f'{"in order" if result.in_order else "OUT OF ORDER"} -> {result.out}')
    if not result.ok:
        print(f'autodice replay: error: {result.missing} of {result.sent} frames did not come through',
              file=sys.stderr)
        return 1
    return 0

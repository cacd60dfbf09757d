"""``autodice bench <name>``: benchmarks that print JSON (and write plots where they have them)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(',') if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bench', required=True, metavar='{hop}')
    hop = sub.add_parser('hop', help='one-way latency of a tensor hop between two processes')
    hop.add_argument('--sizes', type=_floats, default=[0.6, 3.2, 12.8], help='payload sizes in MB')
    hop.add_argument('--setups', default='default,shipped',
                     help='comma list of: default, shipped, network')
    hop.add_argument('--count', type=int, default=30, help='messages per size (after warm-up)')
    hop.add_argument('-o', '--out', type=Path, help='also write the JSON here')


def run(args: argparse.Namespace) -> int:
    if args.bench == 'hop':
        from autodice_ros.bench import hop
        report = hop.run(args.sizes, args.setups.split(','), args.count, out=args.out)
    print(json.dumps(report, indent=2))
    return 0

"""``autodice soak BUNDLE``: long run at a fixed rate: memory growth and mismatched frames."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autodice_ros.soak import MAX_GROWTH, soak


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bundle', type=Path, help='deployment bundle directory')
    parser.add_argument('--duration', type=float, default=600.0, help='seconds (default: 10 minutes)')
    parser.add_argument('--rate', type=float, default=5.0, help='camera frames per second')
    parser.add_argument('--warmup', type=float, default=20.0, help='seconds before the RSS baseline')
    parser.add_argument('-o', '--out', type=Path, help='write the JSON report here')


def run(args: argparse.Namespace) -> int:
    report = soak(args.bundle, args.duration, args.rate, args.warmup, out=args.out)
    print(f'soak: {report.sent} frames sent, {report.received} received, {report.compared} compared, '
          f'{report.mismatched} mismatched (max |diff| {report.max_abs_diff:.2g})')
    for name, growth in sorted(report.rss_growth.items()):
        print(f'  {name:<20} peak RSS {report.rss_after_warmup_mb[name]:7.1f} -> '
              f'{report.rss_at_end_mb[name]:7.1f} MB ({growth * 100:+.1f} %)')
    for error in report.errors:
        print(f'  error: {error}')
    if not report.ok:
        print(f'autodice soak: FAILED (mismatched frames, nothing compared, or RSS growth >= '
              f'{MAX_GROWTH:.0%})', file=sys.stderr)
        return 1
    return 0

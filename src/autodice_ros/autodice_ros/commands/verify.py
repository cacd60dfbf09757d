"""``autodice verify BUNDLE``: the chained sub-models against the whole model; exit 1 if they differ."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bundle', type=Path, help='a bundle made by `autodice split`')
    parser.add_argument('--inputs', type=int, default=3, help='random inputs to try (default 3)')
    parser.add_argument('--model', type=Path,
                        help='the source model, if it moved since the split (sha256 must match)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first input (default 0)')


def run(args: argparse.Namespace) -> int:
    from autodice_ros.verify import TOLERANCE, verify_bundle

    report = verify_bundle(args.bundle, args.inputs, args.model, args.seed)
    print(f'{report.bundle}: {len(report.outputs)} output(s), {report.inputs} seeded input(s), '
          f'against {report.model}')
    for out in report.outputs:
        verdict = 'ok' if out.ok else f'FAIL (> {TOLERANCE:g} relative)'
        print(f'  {out.name}: max abs error {out.max_abs:.3g}, relative {out.relative:.3g}  {verdict}')
    return 0 if report.ok else 1

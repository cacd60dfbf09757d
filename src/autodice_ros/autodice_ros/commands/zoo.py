"""``autodice zoo NAME -o FILE.onnx``: a Model Zoo CNN with seeded weights, no download."""
from __future__ import annotations

import argparse
from pathlib import Path

from autodice_ros.graph import zoo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('name', nargs='?', help=f'one of: {", ".join(zoo.NAMES)}')
    parser.add_argument('-o', '--output', type=Path, help='the .onnx file to write')
    parser.add_argument('--seed', type=int, default=0, help='weights seed (default 0)')
    parser.add_argument('--list', action='store_true', help='list the models and exit')


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name in zoo.NAMES:
            print(name)
        return 0
    if not args.name or not args.output:
        print('autodice zoo: give NAME and -o FILE.onnx (or --list)')
        return 2
    model = zoo.materialize(args.name, args.seed)
    digest = model.write(args.output)
    print(f'{args.output}: {args.name} (seed {args.seed}), sha256 {digest}')
    return 0

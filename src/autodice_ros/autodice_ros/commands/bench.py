"""``autodice bench <name>``: benchmarks that print JSON (and write plots where they have them)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(',') if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bench', required=True, metavar='{hop,split,pipeline,faults,boards,all}')
    hop = sub.add_parser('hop', help='one-way latency of a tensor hop between two processes')
    hop.add_argument('--sizes', type=_floats, default=[0.6, 3.2, 12.8], help='payload sizes in MB')
    hop.add_argument('--setups', default='default,shipped,fastpath,lent,inprocess',
                     help='comma list of: default, shipped, network, fastpath, lent, inprocess')
    hop.add_argument('--count', type=int, default=30, help='messages per size (after warm-up)')
    hop.add_argument('-o', '--out', type=Path, help='also write the JSON here')
    split = sub.add_parser('split', help='whole model vs sum of its parts; predicted vs measured stages')
    split.add_argument('model', type=Path, help='the ONNX model')
    split.add_argument('--boards', type=int, default=3, help='number of stages (default 3)')
    split.add_argument('--reps', type=int, default=15, help='interleaved timing rounds (default 15)')
    split.add_argument('--profile', type=Path, help='a profile JSON of this model (default: profile now)')
    split.add_argument('-o', '--out', type=Path, help='also write the JSON here')
    pipeline = sub.add_parser('pipeline', help='a split pipeline on this machine: fps and latency against '
                                               'the ideal and the unsplit model, RSS per stage')
    pipeline.add_argument('bundle', type=Path, help='the bundle (all partitions run here)')
    pipeline.add_argument('--frames', type=int, default=60, help='images to send (default 60)')
    pipeline.add_argument('--fast-path', choices=('on', 'off'), default='on',
                          help='same-board shared-memory transport (default on)')
    pipeline.add_argument('--in-process', action='store_true', help="all stages in one process ('stages')")
    pipeline.add_argument('--plot', type=Path, help='also draw the PNG here')
    pipeline.add_argument('-o', '--out', type=Path, help='also write the JSON here')
    faults = sub.add_parser('faults', help='a split pipeline whose middle stage is SIGKILLed: time to '
                                           'restart and to resume, frames lost, outputs == the unsplit model')
    faults.add_argument('bundle', type=Path, nargs='?', help='the bundle (default: the zoo SqueezeNet '
                                                             'split 3 ways, in a temporary directory)')
    faults.add_argument('--kills', type=int, default=3, help='times the middle stage is killed (default 3)')
    faults.add_argument('--rate', type=float, default=5.0, help='images per second fed in (default 5)')
    faults.add_argument('--spacing', type=float, default=3.0,
                        help='seconds of steady running after a resume before the next kill (default 3)')
    faults.add_argument('--no-spare', dest='spare', action='store_false',
                        help='restart cold, without the warm spare (as autodice run --no-spare)')
    faults.add_argument('-o', '--out', type=Path, help='write the JSON here (default: print it)')
    boards = sub.add_parser('boards', help='the pipeline on emulated boards (root): fps, latency, hops, '
                                           'CPU, RSS, bytes, energy; targets')
    from autodice_ros.bench.boards import add_arguments as add_boards_arguments
    add_boards_arguments(boards)
    suite = sub.add_parser('all', help='every benchmark into one directory, with a summary of the targets '
                                       '(what `make bench` runs)')
    suite.add_argument('--short', action='store_true', help='the few-minute version')
    suite.add_argument('-o', '--out', type=Path, default=Path('bench-results'), help='output directory')


def run(args: argparse.Namespace) -> int:
    if args.bench == 'hop':
        from autodice_ros.bench import hop
        report = hop.run(args.sizes, args.setups.split(','), args.count, out=args.out)
    elif args.bench == 'split':
        from autodice_ros.bench import split
        from autodice_ros.profile import load_profile
        profile = load_profile(args.profile) if args.profile is not None else None
        report = split.run(args.model, args.boards, args.reps, profile, out=args.out)
    elif args.bench == 'pipeline':
        from autodice_ros.bench import pipeline
        report = pipeline.run(args.bundle, args.frames, args.out, args.plot, args.fast_path == 'on',
                              args.in_process)
    elif args.bench == 'faults':
        from autodice_ros.bench import faults
        report = faults.run(args.bundle, args.kills, args.rate, args.spacing, args.out, args.spare)
        if args.out is None:
            print(json.dumps(report, indent=2))
        print(faults.summary_line(report))
        return 0
    elif args.bench == 'all':
        from autodice_ros.bench import suite
        report = suite.run_all(args.out, args.short)
        print((args.out / 'summary.md').read_text())
    elif args.bench == 'boards':
        import sys

        from autodice_ros.bench import boards
        from autodice_ros.boards import check_available, interrupt_on_termination
        check_available()
        interrupt_on_termination()
        args.out.mkdir(parents=True, exist_ok=True)
        full = boards.run(boards.config_from_args(args))
        print(boards.markdown(full), file=sys.stderr)
        report = {'benchmark': 'boards', 'targets': full['targets'],
                  'files': [str(args.out / f'bench-boards.{ext}') for ext in ('json', 'md', 'png')]}
    print(json.dumps(report, indent=2))
    return 0

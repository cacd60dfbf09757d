"""``autodice compare MODEL --boards K [--link RATE] [-o JSON] [--plot PNG]``: every partitioning
strategy split for real, with per-board FLOPs, weights, peak activations, traffic, predicted
time, energy, and measured CPU time and RSS (see :mod:`autodice_ros.compare`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ALL = ('single', 'layer', 'lop', 'lip', 'height', 'width', 'hybrid')


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(',') if s.strip())
    unknown = [s for s in names if s not in ALL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'{text!r}: expected a comma list of {", ".join(ALL)}')
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', type=Path, help='the ONNX model')
    parser.add_argument('--boards', type=int, required=True, help='K boards to share the model')
    parser.add_argument('--link', default='1gbit',
                        help="link rate between boards: 100mbit, 1gbit, ... (default 1gbit); 'unshaped': "
                             'no transfer time, link energy at the default figure')
    parser.add_argument('--strategies', type=_strategies, default=ALL,
                        help=f'comma list (default: all of {",".join(ALL)}; single: one board, the '
                             f'baseline)')
    parser.add_argument('-o', '--output', type=Path, help='write the comparison as JSON here')
    parser.add_argument('--plot', type=Path, help='draw per-board bars per strategy (PNG)')
    parser.add_argument('--energy', type=Path, help='energy model YAML (default: the shipped energy.yaml)')
    parser.add_argument('--profile', type=Path,
                        help='a profile of this machine (autodice profile): its calibrated roofline')
    parser.add_argument('--runs', type=int, default=5, help='timed runs per board (default 5)')
    parser.add_argument('--no-measure', action='store_true', help='predicted figures only')
    parser.add_argument('--keep', type=Path, help='keep the bundles in this directory')


def run(args: argparse.Namespace) -> int:
    from autodice_ros.compare import StrategyFigures, compare_strategies, plot, report, table
    from autodice_ros.energy import load_energy, parse_rate
    from autodice_ros.errors import MappingError
    from autodice_ros.profile import DEFAULT_CALIBRATION, load_profile

    if args.boards < 1:
        raise MappingError(f'--boards {args.boards}: need at least 1')
    if args.runs < 1:
        raise MappingError(f'--runs {args.runs}: need at least 1')
    link = parse_rate(args.link)
    energy = load_energy(args.energy)
    calibration = load_profile(args.profile).calibration if args.profile else DEFAULT_CALIBRATION
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)

    def progress(result: StrategyFigures) -> None:
        measured = '' if args.no_measure else ', measured'
        print(f'  {result.strategy}: split in {result.split_s:.1f} s{measured}', flush=True)

    results = compare_strategies(args.model, args.boards, args.strategies, link, energy, calibration,
                                 measure=not args.no_measure, runs=args.runs, keep=args.keep,
                                 progress=progress)
    print(f'{args.model}: {args.boards} boards, link {args.link}; energy model {energy.source}; '
          f'roofline {calibration.source}')
    print(table(results))
    data = report(args.model, args.boards, link, energy, calibration, results)
    if args.output is not None:
        args.output.write_text(json.dumps(data, indent=1) + '\n')
    if args.plot is not None:
        plot(results, f'{args.model.name}, {args.boards} boards, link {args.link}', args.plot)
    return 0

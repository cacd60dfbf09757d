"""``autodice plan MODEL --boards K [--mem-cap BYTES] [--link RATE] [--profile JSON] -o MAPPING``.

Writes the plan twice, as AutoDiCE ``<stem>.json`` and our ``<stem>.yaml`` (the prediction
per stage as YAML comments), and prints the prediction.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from autodice_ros.errors import MappingError

_AMOUNT = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKMGT]?)(i?)([Bb]|bit|bps)?(/s)?\s*$')
_POWER = {'': 0, 'k': 1, 'K': 1, 'M': 2, 'G': 3, 'T': 4}


def parse_amount(text: str, what: str) -> float:
    """``512M``, ``1.5GiB``, ``1Gbit``, ``100Mbps``, ``125e6`` -> bytes (bits divided by 8)."""
    match = _AMOUNT.match(text)
    if not match or (match.group(3) and not match.group(2)):
        raise MappingError(f'{what} {text!r}: expected a number with an optional unit '
                           f'(e.g. 512M, 1.5GiB, 1Gbit, 100Mbps)')
    number, prefix, binary, unit, _ = match.groups()
    value = float(number) * (1024 if binary else 1000) ** _POWER[prefix]
    if unit in ('b', 'bit', 'bps'):
        value /= 8
    if value <= 0:
        raise MappingError(f'{what} {text!r}: must be positive')
    return value


def outputs(target: Path) -> tuple[Path, Path]:
    """The two files a plan is written to: ``<stem>.yaml`` and ``<stem>.json``."""
    stem = target.with_suffix('') if target.suffix in ('.json', '.yaml', '.yml') else target
    return stem.with_name(stem.name + '.yaml'), stem.with_name(stem.name + '.json')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', type=Path, help='the ONNX model')
    parser.add_argument('--boards', type=int, required=True, help='number of pipeline stages (boards)')
    parser.add_argument('--mem-cap', help='per-stage memory cap: weights + peak activations (e.g. 300M)')
    parser.add_argument('--link', help='link rate between boards (e.g. 1Gbit, 100MB; plain number = '
                                       'bytes/s); default: transfers are free')
    parser.add_argument('--profile', type=Path, help='a profile JSON from `autodice profile` '
                                                      '(default: the built-in calibration)')
    parser.add_argument('--cost', choices=('auto', 'roofline', 'measured'), default='auto',
                        help='price nodes by the calibrated roofline (auto) or by the profile\'s '
                             'measured times (measured: the profile must be of this model)')
    parser.add_argument('-o', '--output', type=Path, required=True,
                        help='mapping file stem: writes STEM.yaml and STEM.json')


def run(args: argparse.Namespace) -> int:
    from autodice_ros.mapping import build_mapping, to_autodice
    from autodice_ros.partitioner import plan, plan_yaml
    from autodice_ros.profile import load_profile
    from autodice_ros.split.bundle import open_model

    mem_cap = parse_amount(args.mem_cap, '--mem-cap') if args.mem_cap else None
    link = parse_amount(args.link, '--link') if args.link else None
    profile = load_profile(args.profile) if args.profile else None
    _, graph = open_model(args.model)
    result = plan(graph, args.boards, mem_cap, link, profile, args.cost)
    mapping = build_mapping(result.specs(), graph, f'plan of {args.model}')
    yaml_path, json_path = outputs(args.output)
    try:
        yaml_path.parent.mkdir(parents=True, exist_ok=True)
        yaml_path.write_text(plan_yaml(result, mapping, str(args.model)))
        entries = [f' {json.dumps(key)}: {json.dumps(ids)}' for key, ids in to_autodice(mapping).items()]
        json_path.write_text('{\n' + ',\n'.join(entries) + '\n}\n')
    except OSError as exc:
        raise MappingError(f'{args.output}: cannot write the mapping: {exc.strerror or exc}') from exc
    print(f'{args.model}: {args.boards} stage(s), bottleneck {result.bottleneck_s * 1e3:.1f} ms '
          f'(~{1 / result.bottleneck_s:.1f} frames/s), cost: {result.cost_source}')
    for s in result.stages:
        print(f'  {s.key:<14} {s.first} .. {s.last} ({len(s.nodes)} nodes): {s.time_s * 1e3:8.1f} ms '
              f'(compute {s.compute_s * 1e3:.1f} + cut {s.boundary_s * 1e3:.1f} + transfer '
              f'{s.transfer_s * 1e3:.1f}), memory '
              f'{s.memory_bytes / 1e6:7.1f} MB (weights {s.weight_bytes / 1e6:.1f} + activations '
              f'{s.activation_bytes / 1e6:.1f}), receives {len(s.inputs)} tensor(s) '
              f'{s.input_bytes / 1e6:.2f} MB')
    print(f'{yaml_path}, {json_path}: mapping written')
    return 0

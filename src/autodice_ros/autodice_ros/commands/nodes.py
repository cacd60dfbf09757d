"""``autodice nodes MODEL``: the nodes in topological order -- the ids and order mappings refer to."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', type=Path, help='an ONNX model')
    parser.add_argument('--json', action='store_true', help='print a JSON list instead of a table')


def _shapes(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ' '.join('x'.join(str(d) for d in shape) or 'scalar' for shape in shapes)


def run(args: argparse.Namespace) -> int:
    from autodice_ros.graph.cost import node_costs
    from autodice_ros.graph.model import analyze
    from autodice_ros.graph.weights import read_lean

    lean = read_lean(args.model)
    costs = node_costs(analyze(lean.model, lean.path))
    if args.json:
        print(json.dumps([{'index': i, 'id': c.id, 'op': c.op, 'output_shapes': c.output_shapes,
                           'flops': c.flops, 'param_bytes': c.param_bytes,
                           'activation_bytes': c.activation_bytes, 'constant': c.constant}
                          for i, c in enumerate(costs)], indent=1))
        return 0
    width = max(len(c.id) for c in costs)
    print(f'{"#":>4}  {"id":<{width}}  {"op":<20} {"output shape":<18} {"FLOPs":>14} '
          f'{"param bytes":>12} {"act. bytes":>11}')
    for i, c in enumerate(costs):
        op = c.op + (' (const)' if c.constant else '')
        print(f'{i:4d}  {c.id:<{width}}  {op:<20} {_shapes(c.output_shapes):<18} {c.flops:14,d} '
              f'{c.param_bytes:12,d} {c.activation_bytes:11,d}')
    print(f'{len(costs)} nodes ({sum(c.constant for c in costs)} constant, need no mapping): '
          f'{sum(c.flops for c in costs) / 1e9:.2f} GFLOPs, '
          f'{sum(c.param_bytes for c in costs) / 1e6:.1f} MB of parameters')
    return 0

"""``autodice split MODEL (--mapping FILE | --cuts ID,... | --boards K [--strategy S]) -o BUNDLE``."""
from __future__ import annotations

import argparse
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(',') if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma list of numbers') from exc


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split('x')
    try:
        values = [int(p) for p in parts]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'{text!r} is not N or HxW') from exc
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not N or HxW')
    return (values[0], values[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', type=Path, help='the ONNX model to split')
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument('--mapping', type=Path, help='AutoDiCE mapping.json or our mapping .yaml')
    how.add_argument('--cuts', help='comma list of node ids: a pipeline cut after each')
    how.add_argument('--boards', type=int, help='K boards, plan chosen automatically (1: the whole model)')
    parser.add_argument('--strategy', default='layer',
                        choices=('layer', 'lop', 'lip', 'height', 'width', 'hybrid'),
                        help='with --boards: layer-wise pipeline (default), output-channel (lop) or '
                             'input-channel (lip) splits of the heavy layers, spatial tiles of fused '
                             'layers (height, width), or tiles first and a pipeline after (hybrid)')
    parser.add_argument('--layer-splits', type=Path,
                        help='with --mapping: within-layer entries in their own file (AutoDiCE '
                             'horizontal.json, or YAML with a layer_splits list)')
    parser.add_argument('-o', '--output', type=Path, required=True, help='the bundle directory')
    parser.add_argument('--force', action='store_true', help='replace an existing bundle')
    image = parser.add_argument_group('preprocessing in the camera head (default: ImageNet, RGB)')
    image.add_argument('--mean', type=_floats, help='per-channel mean, after --scale')
    image.add_argument('--std', type=_floats, help='per-channel standard deviation')
    image.add_argument('--bgr', action='store_true', help='the model expects BGR channel order')
    image.add_argument('--size', type=_size, help='N or HxW, for inputs with a symbolic size')
    image.add_argument('--scale', type=float, help='pixel scale applied first (default 1/255)')
    parser.add_argument('--labels', type=Path, help='class labels file, one per line (copied in)')


def run(args: argparse.Namespace) -> int:
    from autodice_ros.errors import MappingError
    from autodice_ros.mapping import load_mapping, mapping_from_cuts, read_layer_splits
    from autodice_ros.split.auto import mapping_for_strategy
    from autodice_ros.split.bundle import ImageOptions, open_model, write_split

    if args.strategy != 'layer' and args.boards is None:
        raise MappingError(f'--strategy {args.strategy} needs --boards K (a mapping file says its own)')
    if args.layer_splits is not None and args.mapping is None:
        raise MappingError('--layer-splits needs --mapping')
    lean, graph = open_model(args.model, args.size)
    strategy = None
    if args.mapping is not None:
        extra = read_layer_splits(args.layer_splits) if args.layer_splits is not None else ()
        mapping = load_mapping(args.mapping, graph, extra)
    elif args.cuts is not None:
        mapping = mapping_from_cuts([c.strip() for c in args.cuts.split(',') if c.strip()], graph)
    else:
        mapping = mapping_for_strategy(graph, args.strategy, args.boards)
        strategy = args.strategy
    image = ImageOptions(args.mean, args.std, args.bgr, args.size, args.scale)
    bundle = write_split(lean, graph, mapping, args.output, args.force, image, args.labels, strategy)
    for part in bundle.manifest.partitions:
        crossing = sum(t.nbytes for t in part.inputs)
        print(f'{part.name:>16} on {part.board:<10} {len(part.nodes):4d} nodes  '
              f'{len(part.inputs)} input(s) {crossing / 1e6:8.3f} MB  -> {part.file}')
    print(f'{args.output}: {len(bundle.manifest.partitions)} partition(s) of {args.model}')
    return 0

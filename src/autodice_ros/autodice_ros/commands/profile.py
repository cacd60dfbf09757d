"""``autodice profile MODEL [-o JSON]``: per-node time and memory here, and the fitted cost model."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', type=Path, help='the ONNX model to profile')
    parser.add_argument('-o', '--output', type=Path, help='write the profile JSON here (plan --profile)')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads as a stage runs (default 1)')
    parser.add_argument('--runs', type=int, default=10, help='timed runs after 3 warm-ups (default 10)')
    parser.add_argument('--pool', type=Path, action='append', default=[], metavar='JSON',
                        help='fit the calibration on this earlier profile\'s kernels too (repeatable)')
    parser.add_argument('--top', type=int, default=10, help='list this many slowest nodes (default 10)')


def run(args: argparse.Namespace) -> int:
    from autodice_ros.profile import ProfileError, load_profile, profile_model, save_profile

    if args.threads < 1 or args.runs < 1:
        raise ProfileError(f'--threads {args.threads} --runs {args.runs}: both must be at least 1')
    pool = [load_profile(path) for path in args.pool]
    profile = profile_model(args.model, threads=args.threads, runs=args.runs, pool=pool)
    cal = profile.calibration
    print(f'{args.model}: {profile.run_s * 1e3:.1f} ms per run (median of {profile.runs}, '
          f'{profile.threads} thread(s)); kernels {profile.kernels_s * 1e3:.1f} ms')
    print(f'memory: weights {profile.weight_bytes / 1e6:.1f} MB, activation peak '
          f'{profile.activation_peak_bytes / 1e6:.1f} MB (ORT arena), session peak RSS '
          f'+{profile.session_rss_bytes / 1e6:.1f} MB')
    factors = ', '.join(f'{op} x{f:g}' for op, f in sorted(cal.op_factor.items()))
    print(f'roofline: {cal.flops_per_s / 1e9:.1f} GFLOP/s, {cal.bytes_per_s / 1e9:.2f} GB/s, '
          f'{cal.overhead_s * 1e6:.1f} us per kernel, {cal.run_overhead_s * 1e6:.0f} us per run'
          + (f'; op factors: {factors}' if factors else ''))
    predicted = sum(n.predicted_s for n in profile.nodes) + cal.run_overhead_s
    print(f'roofline predicts {predicted * 1e3:.1f} ms for the whole run')
    slowest = sorted(profile.nodes, key=lambda n: -n.seconds)[:args.top]
    for node in slowest:
        print(f'  {node.id:>24} {node.op:<18} {node.seconds * 1e3:8.3f} ms  (roofline '
              f'{node.predicted_s * 1e3:8.3f} ms)')
    if args.output is not None:
        save_profile(profile, args.output)
        print(f'{args.output}: profile written')
    return 0

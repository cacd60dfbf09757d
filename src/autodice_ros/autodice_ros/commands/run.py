"""``autodice run BUNDLE [--board NAME]``: this board's nodes as supervised child processes.

The same plan as ``ros2 launch autodice_ros pipeline.launch.py bundle:=... board:=...``: every
plan option is a flag here and a launch argument there.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from autodice_ros.plan import PlanOptions, make_plan, option_fields, parse_bool
from autodice_ros.runner import RESTART_POLICIES, Runner


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    for name, kind, default, help_text in option_fields():
        parser.add_argument(f'--{name.replace("_", "-")}', dest=name, default=default,
                            type=parse_bool if kind is bool else kind,
                            help=f'{help_text} (default: {default!r})')


def plan_options(args: argparse.Namespace) -> PlanOptions:
    return PlanOptions(**{name: getattr(args, name) for name, _, _, _ in option_fields()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bundle', help='deployment bundle directory')
    add_plan_options(parser)
    parser.add_argument('--restart', choices=RESTART_POLICIES, default='never',
                        help='restart a node that dies (default: never: stop all, exit non-zero)')
    parser.add_argument('--max-restarts', type=int, default=5, help='per node, with --restart')
    parser.add_argument('--no-spare', dest='spare', action='store_false',
                        help='with --restart on-failure: restart cold instead of keeping a warm spare '
                             'process (saves its memory, about 85 MB, and makes a restart take '
                             'about 1.5 s longer)')
    parser.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds')
    parser.add_argument('--print-plan', action='store_true', help='print the plan as JSON and exit')


def run(args: argparse.Namespace) -> int:
    specs = make_plan(args.bundle, plan_options(args))
    if args.print_plan:
        print(json.dumps([asdict(s) for s in specs], indent=2))
        return 0
    return Runner(specs, restart=args.restart, max_restarts=args.max_restarts,
                  spares=args.spare).run(args.duration)

"""``autodice demo``: split a zoo CNN, run it as a ROS 2 pipeline over DDS, and report."""
from __future__ import annotations

import argparse
from pathlib import Path

from autodice_ros.demo import DemoConfig, print_summary, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument('--model', default=defaults.model, help='zoo model (autodice zoo --list)')
    parser.add_argument('--boards', type=int, default=defaults.boards, help='partitions')
    parser.add_argument('--frames', type=int, default=defaults.frames, help='frames to report on')
    parser.add_argument('--rate', type=float, default=defaults.rate, help='synthetic camera fps')
    parser.add_argument('--depth', type=int, default=defaults.depth,
                        help='QoS depth: 1 = newest frame only (live camera), N = every frame up to N queued')
    parser.add_argument('--workdir', type=Path, default=defaults.workdir, help='models and bundles go here')


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(args.model, args.boards, args.frames, args.rate, args.depth, args.workdir)
    print_summary(run_demo(config))
    return 0

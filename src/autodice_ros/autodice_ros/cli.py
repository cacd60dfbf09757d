"""``autodice <subcommand>``: one entry point for every tool and node, nothing sourced.

Subcommands live in their own modules and are imported only when chosen, so ``--help`` is
instant and a tool that needs no ROS never loads rclpy. Every ``AutodiceError`` becomes one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import NamedTuple

from autodice_ros.errors import AutodiceError


class Command(NamedTuple):
    module: str
    help: str
    raw: bool = False    # a node or a wrapper: main(argv) gets the arguments untouched


COMMANDS: dict[str, Command] = {
    'zoo': Command('autodice_ros.commands.zoo', 'materialize a Model Zoo CNN with seeded weights'),
    'nodes': Command('autodice_ros.commands.nodes', 'list a model\'s nodes: ids, ops, shapes, FLOPs, bytes'),
    'split': Command('autodice_ros.commands.split', 'split a model into a deployment bundle'),
    'verify': Command('autodice_ros.commands.verify', 'check a bundle against the whole model'),
    'profile': Command('autodice_ros.commands.profile', 'measure per-node time and memory on this machine'),
    'plan': Command('autodice_ros.commands.plan', 'find the best K-stage layer-wise mapping'),
    'compare': Command('autodice_ros.commands.compare', 'compare partitioning strategies per board'),
    'run': Command('autodice_ros.commands.run', 'start a board\'s nodes and supervise them'),
    'replay': Command('autodice_ros.commands.replay', 'run a bundle over the images of a rosbag2 bag'),
    'demo': Command('autodice_ros.commands.demo', 'the end-to-end demo behind `make demo`'),
    'bench': Command('autodice_ros.commands.bench', 'benchmarks: hop, split, pipeline, boards'),
    'boards': Command('autodice_ros.commands.boards', 'emulate boards with network namespaces (root)'),
    'soak': Command('autodice_ros.commands.soak', 'long run: memory growth and mismatched frames'),
    'env': Command('autodice_ros.commands.env', 'print the environment, or run a command in it', raw=True),
    'stage': Command('autodice_ros.nodes.stage', 'node: run one sub-model', raw=True),
    'stages': Command('autodice_ros.nodes.stages', 'node: several sub-models in one process', raw=True),
    'camera_head': Command('autodice_ros.nodes.camera_head', 'node: Image -> input tensor', raw=True),
    'tail': Command('autodice_ros.nodes.tail', 'node: output tensor -> result', raw=True),
    'image_source': Command('autodice_ros.nodes.image_source', 'node: camera from a folder or a pattern',
                            raw=True),
}


def _overview() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ['usage: autodice <subcommand> [options]', '', 'subcommands:']
    lines += [f'  {name:<{width}}  {cmd.help}' for name, cmd in COMMANDS.items()]
    lines += ['', 'autodice <subcommand> --help shows its options.']
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ('-h', '--help'):
        print(_overview())
        return 0
    name, rest = args[0], args[1:]
    if name in ('-V', '--version'):
        from autodice_ros import __version__
        print(__version__)
        return 0
    if name not in COMMANDS:
        print(f'autodice: unknown subcommand {name!r}\n\n{_overview()}', file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    if cmd.raw:
        return int(module.main([f'autodice {name}', *rest]) or 0)
    parser = argparse.ArgumentParser(prog=f'autodice {name}', description=cmd.help)
    module.add_arguments(parser)
    ns = parser.parse_args(rest)
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt   # SIGTERM unwinds like Ctrl-C: children stopped, bags closed

    stops = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, interrupt) for s in stops} if in_main else {}
    try:
        return int(module.run(ns) or 0)
    except AutodiceError as exc:
        print(f'autodice {name}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + (received[0] if received else signal.SIGINT)
    except Exception:
        # After a stop signal, rclpy shuts its context down too: whatever fails because of that
        # (a spin on a dead context) is the interruption, not a bug. Cleanup has run.
        if received:
            return 128 + received[0]
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""``autodice boards up|down|status``: emulate a robot's boards on this machine (root).

``up`` builds one network namespace, shaped link and cgroup per board (see
:mod:`autodice_ros.boards`), optionally runs ``autodice run BUNDLE --board NAME`` in each, and
holds them until Ctrl-C, SIGTERM, ``--duration`` or a board's pipeline exits; then removes
everything. ``--detach`` leaves the boards up for your own commands
(``ip netns exec adb-<instance>-<board> ...``) until ``autodice boards down``. ``down`` removes
every namespace and cgroup this tool made (of one ``--instance``, or all of them).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from autodice_ros.boards import (
    DEFAULT_CONFIG,
    Boards,
    BoardsSpec,
    check_available,
    cleanup,
    config_file,
    interrupt_on_termination,
    load_spec,
    status,
)
from autodice_ros.errors import BoardsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='action', required=True, metavar='{up,down,status}')
    up = sub.add_parser('up', help='create the boards (and run a bundle on them) until Ctrl-C')
    up.add_argument('--config', type=Path, help=f'boards YAML (default: the shipped {DEFAULT_CONFIG})')
    up.add_argument('--board', action='append', default=[], metavar='NAME',
                    help="a board to create (repeat); default: the bundle's boards, else the file's")
    up.add_argument('--bundle', type=Path, help='run `autodice run BUNDLE --board NAME` on every board')
    up.add_argument('--cpu', help="cores per board (e.g. 0.5); 'none': no quota")
    up.add_argument('--memory', help="memory limit per board (e.g. 1GiB); 'none': no limit")
    up.add_argument('--link', help="link rate per board (e.g. 100mbit, 1gbit, unshaped)")
    up.add_argument('--burst', help='tbf burst in bytes (default: 1 ms at the rate, at least 32 KiB)')
    up.add_argument('--delay-ms', type=float, help='added link delay (needs sch_netem: absent here)')
    up.add_argument('--discovery', choices=('multicast', 'static'), help='DDS discovery between boards')
    up.add_argument('--instance', help='name part that keeps concurrent users apart (default: the pid)')
    up.add_argument('--source', default='synthetic',
                    help="with --bundle: camera stand-in on the head board ('synthetic', 'none', a folder)")
    up.add_argument('--rate', type=float, default=5.0, help='with --bundle: camera frames per second')
    up.add_argument('--count', type=int, default=0, help='with --bundle: frames to send (0: forever)')
    up.add_argument('--duration', type=float, default=0.0, help='tear down after this many seconds')
    up.add_argument('--detach', action='store_true',
                    help='leave the boards up and exit (no --bundle); remove them with `down`')
    down = sub.add_parser('down', help='remove every namespace and cgroup autodice boards made')
    down.add_argument('--instance', help='only this instance (default: all of them)')
    st = sub.add_parser('status', help='list the emulated boards that exist now')
    st.add_argument('--instance', help='only this instance')
    st.add_argument('--json', action='store_true', help='print JSON')


def _spec(args: argparse.Namespace) -> BoardsSpec:
    names: list[str] = list(args.board)
    if not names and args.bundle is not None:
        from autodice_ros.manifest import load_bundle
        names = list(load_bundle(args.bundle).manifest.boards)
    overrides: dict[str, Any] = {}
    for key in ('cpu', 'memory', 'link', 'burst'):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = None if value.lower() == 'none' and key != 'link' else value
    if overrides.get('cpu') is not None:
        try:
            overrides['cpu'] = float(overrides['cpu'])
        except ValueError as exc:
            raise BoardsError(f'--cpu {args.cpu!r}: expected a number of cores or none') from exc
    if args.delay_ms is not None:
        overrides['delay_ms'] = args.delay_ms
    path = args.config if args.config is not None else config_file(DEFAULT_CONFIG)
    return load_spec(path if path.is_file() else None, names, overrides, args.discovery)


def _summary(boards: Boards) -> None:
    for name in boards.spec.names:
        use = boards.usage(name)
        print(f'  {name:<12} cpu {use.cpu_seconds:8.2f} s'
              f'  peak memory {use.memory_peak_bytes / 2**20:8.1f} MiB  OOM kills {use.oom_kills}'
              f'  link tx {use.link.tx_bytes / 1e6:9.2f} MB  rx {use.link.rx_bytes / 1e6:9.2f} MB',
              flush=True)


def _up(args: argparse.Namespace) -> int:
    if args.detach and args.bundle is not None:
        raise BoardsError('--detach cannot keep a pipeline running (its processes die with this one); '
                          'leave out --bundle, or leave out --detach')
    spec = _spec(args)
    boards = Boards(spec, args.instance, log=lambda text: print(f'[autodice boards] {text}', flush=True))
    interrupt_on_termination()
    if args.detach:
        boards.up()
        for name in spec.names:
            print(f'{name}: ip netns exec {boards.netns(name)} <command>   '
                  f'(address {boards.address(name)}, cgroup {boards.cgroup(name)})')
        print(f'remove with: autodice boards down --instance {boards.instance}')
        return 0
    status_code = 0
    with boards:
        procs = {}
        if args.bundle is not None:
            run_args = ['--source', args.source, '--rate', str(args.rate), '--count', str(args.count)]
            procs = boards.start_pipeline(args.bundle, run_args)
        end = time.monotonic() + args.duration if args.duration else None
        try:
            while end is None or time.monotonic() < end:
                dead = {b: p.poll() for b, p in procs.items() if p.poll() is not None}
                if dead:
                    for board, code in dead.items():
                        kills = boards.oom_kills(board)
                        why = f' (OOM-killed {kills} task(s): memory limit reached)' if kills else ''
                        print(f'[autodice boards] the pipeline on {board} exited with {code}{why}',
                              flush=True)
                    status_code = 1
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            print('[autodice boards] stopping', flush=True)
        _summary(boards)
    return status_code


def _status(args: argparse.Namespace) -> int:
    entries = list(status(args.instance))
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print('no emulated boards')
    for entry in entries:
        if 'cgroup_only' in entry:
            print(f"cgroup {entry['cgroup_only']} (no namespace) pids {entry['pids']}")
            continue
        group = entry.get('cgroup')
        limits = ''
        if group:
            cpu = f"{group['cpu_cores']:g} core" if group['cpu_cores'] else 'all cores'
            mem = f"{group['memory_limit'] / 2**30:g} GiB" if group['memory_limit'] else 'no limit'
            limits = (f"  [{cpu}, {mem}, using {group['memory_usage'] / 2**20:.0f} MiB, "
                      f"cpu {group['cpu_seconds']:.1f} s, {len(group['pids'])} task(s)]")
        print(f"{entry['netns']}{limits}")
        for link in entry['links']:
            print(f"  {link['ifname']:<5} {link['state'] or '?':<8} {' '.join(link['addresses']) or '-':<14} "
                  f"{link['qdisc'] or '-':<26} tx {link['tx_bytes']} rx {link['rx_bytes']}")
    return 0


def run(args: argparse.Namespace) -> int:
    check_available()
    if args.action == 'up':
        return _up(args)
    if args.action == 'down':
        removed = cleanup(args.instance, log=print)
        if not removed:
            print('nothing to remove')
        return 0
    return _status(args)

"""Emulated boards: a 2-way split across two network namespaces equals the single node, frame by
frame; specs parse and refuse what the host cannot do; nothing is left behind."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import split, whole_model

from autodice_ros import cli
from autodice_ros.boards import (
    Boards,
    LinkSpec,
    check_available,
    leftovers,
    load_spec,
    parse_bytes,
    parse_rate,
)
from autodice_ros.errors import BoardsError
from autodice_ros.manifest import load_bundle

FRAMES = 8


def _unavailable() -> str:
    if os.geteuid() != 0:
        return 'needs root (network namespaces, tc, cgroups)'
    if shutil.which('ip') is None:
        return 'needs iproute2 (`ip`)'
    try:
        check_available()
    except BoardsError as exc:
        return str(exc)
    return ''


needs_netns = pytest.mark.skipif(bool(_unavailable()), reason=_unavailable() or 'available')


def test_board_specs_come_from_yaml_and_flags(tmp_path: Path) -> None:
    path = tmp_path / 'boards.yaml'
    path.write_text('defaults: {cpu: 0.5, memory: 1GiB, link: 100mbit}\n'
                    'boards: {nx01: {cpu: 1, link: unshaped}, nx02: {}}\n')
    spec = load_spec(path)
    assert spec.names == ('nx01', 'nx02')
    nx01, nx02 = spec.boards
    assert (nx01.cpu, nx01.memory, nx01.link.rate) == (1.0, 2**30, None)
    assert (nx02.cpu, nx02.memory, nx02.link.rate) == (0.5, 2**30, 100_000_000)
    flagged = load_spec(path, ['nx02', 'board7'], {'link': '1gbit', 'memory': None})
    assert flagged.names == ('nx02', 'board7')
    assert all(b.link.rate == 10**9 and b.memory is None and b.cpu == 0.5 for b in flagged.boards)
    assert parse_rate('125MB') == 10**9 and parse_bytes('512M') == 512 * 10**6
    assert LinkSpec(parse_rate('100mbit')).tbf_args()[:4] == ['tbf', 'rate', '100000000bit', 'burst']
    assert LinkSpec(10**9).wire_seconds(125_000_000) == pytest.approx(1.0)


def test_bad_specs_are_errors_that_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / 'boards.yaml'
    path.write_text('boards: {nx01: {cpus: 2}}\n')
    with pytest.raises(BoardsError, match=r'boards\.nx01.*cpus'):
        load_spec(path)
    with pytest.raises(BoardsError, match='link'):
        load_spec(None, ['a'], {'link': 'fast'})
    with pytest.raises(BoardsError, match='letters, digits'):
        load_spec(None, ['nx-01'])


def test_without_root_the_cli_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    assert cli.main(['boards', 'up', '--board', 'a']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'root' in err


@needs_netns
def test_delay_is_refused_where_the_kernel_has_no_netem() -> None:
    spec = load_spec(None, ['a'], {'delay_ms': 5})
    with pytest.raises(BoardsError, match='netem'):
        Boards(spec, instance=f't{os.getpid()}d').up()
    assert leftovers(f't{os.getpid()}d') == ([], [])


@needs_netns
def test_a_failure_inside_the_block_removes_everything() -> None:
    instance = f't{os.getpid()}f'
    spec = load_spec(None, ['a', 'b'], {'cpu': 0.5, 'memory': '256MiB', 'link': '100mbit'})
    with pytest.raises(RuntimeError, match='boom'), Boards(spec, instance=instance) as boards:
        spaces, groups = leftovers(instance)
        assert len(spaces) == 3 and len(groups) == 2
        cpu = Path(f'/sys/fs/cgroup/cpu/{boards.cgroup("a")}')
        quota, period = (int((cpu / name).read_text()) for name in ('cpu.cfs_quota_us', 'cpu.cfs_period_us'))
        assert quota / period == 0.5
        limit = Path(f'/sys/fs/cgroup/memory/{boards.cgroup("a")}/memory.limit_in_bytes').read_text()
        assert int(limit) == 256 * 2**20
        sleeper = boards.spawn('b', ['sleep', '60'])
        assert sleeper.pid in boards.pids('b')
        raise RuntimeError('boom')
    assert leftovers(instance) == ([], [])
    assert sleeper.poll() is not None


@needs_netns
def test_two_boards_run_a_two_way_split_equal_to_the_single_node(tmp_path: Path,
                                                                 zoo_model: Callable[[str], Path]) -> None:
    from autodice_ros.bench.boards import DriverClient, board_watch, crossing_bytes, start_driver

    model = zoo_model('squeezenet')
    bundle = split(model, tmp_path / 'bundle', '--boards', '2')
    manifest = load_bundle(bundle).manifest
    assert manifest.boards == ('board0', 'board1')
    crossing = sum(crossing_bytes(manifest).values())
    assert crossing > 100_000
    instance = f't{os.getpid()}p'
    spec = load_spec(None, manifest.boards, {'cpu': None, 'memory': None, 'link': '1gbit'})
    recorded = tmp_path / 'frames.npz'
    with Boards(spec, instance=instance) as boards, open(tmp_path / 'nodes.log', 'w') as log:
        procs = boards.start_pipeline(bundle, ['--source', 'none'], stdout=log, stderr=log)
        driver = DriverClient(start_driver(boards, bundle, log, record=True), board_watch(boards, procs))
        assert driver.request(90.0, {'cmd': 'connect', 'timeout': 60.0}) == {'ok': True}
        assert driver.request(90.0, {'cmd': 'warmup', 'frames': 2, 'interval': 1.0, 'timeout': 60.0})['ok']
        before = boards.link_counters('board0')
        reply = driver.request(90.0, {'cmd': 'record', 'frames': FRAMES, 'rate': 4.0, 'path': str(recorded),
                                      'timeout': 30.0})
        sent = boards.link_counters('board0') - before
        driver.request(10.0, {'cmd': 'quit'})
    assert leftovers(instance) == ([], [])
    assert reply['received'] == FRAMES and reply['in_order'] and not reply['errors']
    assert sent.tx_bytes >= FRAMES * crossing            # the activations really crossed the link
    data = np.load(recorded)
    frames = [int(data[f'frame_{i}']) for i in range(FRAMES)]
    assert frames == list(range(frames[0], frames[0] + FRAMES))
    expected = whole_model(model, [data[f'input_{i}'] for i in range(FRAMES)])
    for index, reference in enumerate(expected):
        for name, value in reference.items():
            assert np.max(np.abs(data[f'output_{index}_{name}'] - value)) <= 1e-4, (index, name)


@needs_netns
def test_down_removes_leftovers_by_prefix() -> None:
    instance = f't{os.getpid()}k'
    boards = Boards(load_spec(None, ['a'], {'link': 'unshaped'}), instance=instance)
    boards.up()                       # as if this process died without leaving the block
    assert leftovers(instance)[0]
    result = subprocess.run([str(Path(__file__).resolve().parents[1] / '.venv' / 'bin' / 'autodice'),
                             'boards', 'down', '--instance', instance], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert leftovers(instance) == ([], [])

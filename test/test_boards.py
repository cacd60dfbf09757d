"""Emulated boards: a 2-way split across two network namespaces equals the single node, frame by
frame; specs parse and refuse what the host cannot do; nothing is left behind."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import needs_netns, split, whole_model

from autodice_ros import cli
from autodice_ros.boards import (
    Boards,
    LinkSpec,
    leftovers,
    load_spec,
    parse_bytes,
    parse_rate,
)
from autodice_ros.errors import BoardsError
from autodice_ros.manifest import (
    INPUT_TOPIC,
    Manifest,
    ModelInfo,
    Partition,
    Postprocess,
    Preprocess,
    TensorEntry,
    derive_edges,
    load_bundle,
    partition_topic,
)

FRAMES = 8



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


def _skip_link_manifest() -> Manifest:
    """x -> p0 (board a) -> p1 (board b) -> p2 (board b) -> y, p0 also feeds p2: a join."""
    def t(name: str, topic: str) -> TensorEntry:
        return TensorEntry(name, 'float32', (1, 250_000), topic)      # 1 MB each

    x, h0, h1, y = (t('x', INPUT_TOPIC), t('h0', partition_topic('p0')), t('h1', partition_topic('p1')),
                    t('y', partition_topic('p2')))
    parts = (Partition('p0', 'a', 'p0.onnx', '', (x,), (h0,)),
             Partition('p1', 'b', 'p1.onnx', '', (h0,), (h1,)),
             Partition('p2', 'b', 'p2.onnx', '', (h0, h1), (y,)))
    return Manifest(ModelInfo('m', '/m.onnx', '', 13, 8), (x,), (y,), parts, Preprocess('x'),
                    Postprocess('y'), edges=derive_edges((x,), parts, (y,)))


def test_hops_come_from_fresh_diagnostics_and_joins_get_no_ratio() -> None:
    from autodice_ros.bench.boards import hop_latencies, ideal_fps

    manifest = _skip_link_manifest()

    def snapshot(frames: int, p0_out: float, p1_in: float) -> dict[str, dict[str, str]]:
        nodes = {'camera_head': {'frames_out': frames, 'age_out_ms.last': 1.0},
                 'p0': {'frames_in': frames, 'frames_out': frames, 'age_in_ms.last': 2.0,
                        'age_out_ms.last': p0_out},
                 'p1': {'frames_in': frames, 'frames_out': frames, 'age_in_ms.last': p1_in,
                        'age_out_ms.last': p1_in + 5},
                 'p2': {'frames_in': 2 * frames, 'frames_out': frames, 'age_in_ms.last': p1_in + 6,
                        'age_out_ms.last': p1_in + 9},
                 'tail': {'frames_in': frames, 'latency_ms.last': p1_in + 10}}
        return {f'/autodice/{n}': {k: str(v) for k, v in values.items()} for n, values in nodes.items()}

    # three frames; the middle one's snapshot is stale for p0 (no new frame): it must not count
    snaps = [snapshot(0, 0, 0), snapshot(1, 10, 19), snapshot(1, 50, 99), snapshot(2, 10, 21),
             snapshot(3, 10, 20)]
    hops = {h['edge']: h for h in hop_latencies(manifest, snaps, '/autodice', LinkSpec(10**9))}
    assert hops['p0->p1']['hop_ms'] == pytest.approx(10.0) and hops['p0->p1']['frames'] == 3
    assert hops['p0->p1']['wire_ms'] == pytest.approx(8.0)           # 1 MB at 1 Gbit/s
    assert hops['p0->p1']['hop_over_wire'] == pytest.approx(10.0 / 8.0)
    assert hops['p0->p2']['join'] and hops['p0->p2']['hop_over_wire'] is None
    assert not hops['p1->p2']['across_boards'] and hops['p1->p2']['wire_ms'] is None
    stage = {'wall_ms': {'p0': 100.0, 'p1': 50.0, 'p2': 50.0},
             'cpu_ms': {'p0': 100.0, 'p1': 60.0, 'p2': 60.0}}
    ideal = ideal_fps(manifest, stage, LinkSpec(10**9), cpu=0.5)
    assert ideal['fps'] == pytest.approx(1000 / 240)                 # board b: (60 + 60) / 0.5 ms
    assert ideal_fps(manifest, stage, LinkSpec(10**7), cpu=None)['fps'] == pytest.approx(1 / 1.6)


def test_bench_flags_become_the_run_options_of_every_board() -> None:
    import argparse

    from autodice_ros.bench.boards import WITHIN_LAYER_IN_FLIGHT, add_arguments, config_from_args, run_args
    from autodice_ros.commands.run import add_arguments as run_arguments
    from autodice_ros.commands.run import plan_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(['--short', '--depth', '1', '--one-process',
                                                 '--max-in-flight', '2']))
    assert config.depth == 1 and config.one_process and config.strategies == ('layer',)
    assert config.max_in_flight == 2
    run = argparse.ArgumentParser()
    run_arguments(run)
    cases = (('lop', True, 1, 2, 2), ('lop', False, 3, 0, 0), ('layer', False, 0, 1, 1),
             ('layer', False, 0, None, 0), ('height', False, 0, None, WITHIN_LAYER_IN_FLIGHT))
    for strategy, one_process, depth, limit, expect in cases:
        options = plan_options(run.parse_args(['b', *run_args(strategy, one_process, depth, limit)]))
        assert options.depth == (depth or 10) and options.max_in_flight == expect
        assert options.one_process == one_process
        assert options.in_process == (strategy != 'layer' and not one_process)
    with pytest.raises(BoardsError, match='--depth 0'):
        config_from_args(parser.parse_args(['--depth', '0']))
    with pytest.raises(BoardsError, match='--max-in-flight -1'):
        config_from_args(parser.parse_args(['--max-in-flight', '-1']))


def test_memory_demo_flags_and_target() -> None:
    import argparse

    from autodice_ros.bench.boards import BenchConfig, add_arguments, config_from_args, markdown, targets

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    short = config_from_args(parser.parse_args(['--demo-only', '--short']))
    assert short.strategies == () and short.demo_ks and short.demo_memory == 576 * 2**20
    assert short.demo_reference_memory is None and BenchConfig().demo_reference_memory == 2**30
    with pytest.raises(BoardsError, match='nothing to run'):
        config_from_args(parser.parse_args(['--demo-only', '--no-demo']))
    # a thrashing whole model fails the way an OOM-killed one does; the 1 GiB reference is no part
    # of the target, and a split that ran while re-reading its weights says so
    whole = {'model': 'vgg19', 'k': 1, 'split': '--boards 1', 'memory_limit_mib': 576.0, 'outcome': 'failed',
             'oom_killed': False, 'thrashing': True, 'detail': 'board board0: thrashing'}
    split = {'model': 'vgg19', 'k': 3, 'split': '--mapping m.yaml', 'memory_limit_mib': 576.0,
             'outcome': 'ran',
             'boards': {'board1': {'cgroup_peak_mib': 540.0, 'reread_mib_per_frame': 300.0}}}
    reference = {'model': 'vgg19', 'k': 1, 'split': '--boards 1', 'memory_limit_mib': 1024.0,
                 'outcome': 'ran', 'reference': True}
    row = targets([], [reference, whole, split], 'vgg19', 'vgg19')[-1]
    assert row['met'] is True and '1024 MiB' not in row['detail'] and 'board1 300 MiB' in row['detail']
    assert targets([], [dict(whole, outcome='ran'), split], 'vgg19', 'vgg19')[-1]['met'] is False
    assert targets([], [dict(whole, thrashing=False), split], 'vgg19', 'vgg19')[-1]['met'] is False
    report = {'model': 'vgg19', 'host': {'cores': 2, 'load_before': [], 'load_after': []},
              'settings': {'cpu': 0.5}, 'runs': [], 'memory_demo': [reference, whole, split],
              'targets': [row], 'energy_model': ''}
    assert '- reference: vgg19 `split --boards 1` on 1 board(s) of 1024 MiB: **ran**' in markdown(report)


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
    from autodice_ros.bench.boards import board_watch, connect_driver, crossing_bytes

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
        driver = connect_driver(boards, bundle, board_watch(boards, procs), log, record=True)
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


@needs_netns
def test_a_driver_that_cannot_see_the_pipeline_is_replaced_then_the_failure_names_every_try(
        tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    """No pipeline runs: each driver times out; a new one is started each time; all are stopped."""
    from autodice_ros.bench.boards import BoardDiedError, connect_driver

    bundle = split(zoo_model('squeezenet'), tmp_path / 'bundle', '--boards', '2')
    manifest = load_bundle(bundle).manifest
    instance = f't{os.getpid()}r'
    spec = load_spec(None, manifest.boards, {'cpu': None, 'memory': None, 'link': '1gbit'})
    said: list[str] = []
    with Boards(spec, instance=instance) as boards:
        with pytest.raises(BoardDiedError) as caught:
            connect_driver(boards, bundle, lambda: None, timeout=3.0, attempts=2, say=said.append)
        drivers = [p for p in boards._procs if 'driver' in p.args]
        assert len(drivers) == 2 and all(p.poll() is not None for p in drivers)
    assert leftovers(instance) == ([], [])
    message = str(caught.value)
    assert message.startswith('2 driver(s) tried:') and message.count('did not connect within 3 s') == 2
    assert 'no tail publishing it' in message
    assert len(said) == 1 and 'driver 1 of 2' in said[0]

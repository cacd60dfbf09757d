"""The runner supervises real node processes: restarts by policy, stops everything on a signal."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pipeline_helpers import AUTODICE, split

from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.runner import Runner


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[[str], Path]) -> Path:
    return split(zoo_model('squeezenet'), tmp_path_factory.mktemp('runner') / 'bundle', '--boards', '2')


def children(pid: int) -> list[int]:
    path = Path(f'/proc/{pid}/task/{pid}/children')
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != 'Z'


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_every_child_within_5_s_without_zombies(sig: signal.Signals, bundle: Path) -> None:
    proc = subprocess.Popen([AUTODICE, 'run', str(bundle), '--namespace', '/runner_sig'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expected = len(make_plan(bundle))
    assert wait(lambda: len(children(proc.pid)) == expected, 30.0), proc.pid
    kids = children(proc.pid)
    time.sleep(2.0)                                  # let the nodes get fully up
    start = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=15)
    assert time.monotonic() - start < 5.0, out
    assert proc.returncode == 0, out
    assert not [k for k in kids if alive(k)], out


def owned_fastdds_segments(pid: int) -> set[str]:
    """The Fast DDS segments a process owns: those whose lock file it holds (/proc/locks)."""
    holders = {}
    for line in Path('/proc/locks').read_text().splitlines():
        fields = line.split()
        if fields[1] == 'FLOCK':
            holders[int(fields[5].split(':')[-1])] = int(fields[4])
    return {lock.name[:-3] for lock in Path('/dev/shm').glob('fastdds_*_el')
            if not lock.name.startswith('fastdds_port') and holders.get(lock.stat().st_ino) == pid}


@pytest.mark.parametrize('spares', [True, False], ids=['warm-spare', 'cold'])
def test_on_failure_policy_restarts_a_killed_stage(bundle: Path, spares: bool) -> None:
    specs = make_plan(bundle, PlanOptions(namespace=f'/runner_restart_{int(spares)}', source='none'))
    stage = next(s for s in specs if s.executable == 'stage')
    with Runner(specs, restart='on-failure', max_restarts=2, spares=spares) as runner:
        first = runner.pid(stage.name)
        assert wait(lambda: bool(runner.spare_pids()) == spares, 10.0)
        waiting = runner.spare_pids()
        time.sleep(2.5)                  # the runner leaves a lock file younger than 1 s alone
        own_segments = owned_fastdds_segments(first)
        assert own_segments, 'the stage owns no Fast DDS segment: is the shared-memory profile on?'
        os.kill(first, signal.SIGKILL)
        assert wait(lambda: runner.poll() is None and runner.pid(stage.name) != first, 10.0)
        child = next(c for c in runner.children if c.spec.name == stage.name)
        assert child.restarts == 1 and child.exits == [-signal.SIGKILL]
        assert alive(runner.pid(stage.name))
        # the spare became the stage; a new one takes its place once the restart has settled
        assert (runner.pid(stage.name) in waiting) == spares
        if spares:
            assert wait(lambda: runner.poll() is None and len(runner.spare_pids()) == 1
                        and runner.spare_pids() != waiting, 15.0)
        # the killed stage's segments (memory in /dev/shm) did not outlive it
        assert not [n for n in own_segments if (Path('/dev/shm') / n).exists()]
        spare_pids = runner.spare_pids()
    assert not [p for p in spare_pids if alive(p)]


def test_never_policy_stops_and_reports_the_dead_node(bundle: Path) -> None:
    specs = make_plan(bundle, PlanOptions(namespace='/runner_never', source='none'))
    runner = Runner(specs, restart='never')
    runner.start()
    try:
        pids = [c.process.pid for c in runner.children if c.process is not None]
        os.kill(pids[-1], signal.SIGKILL)
        status = None
        end = time.monotonic() + 10
        while status is None and time.monotonic() < end:
            status = runner.poll()
            time.sleep(0.05)
        assert status is not None and status != 0
    finally:
        runner.stop()
    assert not [p for p in pids if alive(p)]


def test_children_die_with_a_killed_runner(bundle: Path) -> None:
    proc = subprocess.Popen([AUTODICE, 'run', str(bundle), '--namespace', '/runner_kill9'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    expected = len(make_plan(bundle))
    assert wait(lambda: len(children(proc.pid)) == expected, 30.0)
    kids = children(proc.pid)
    proc.kill()
    proc.wait()
    assert wait(lambda: not [k for k in kids if alive(k)], 10.0)


def test_security_without_fast_dds_security_fails_loudly(bundle: Path, tmp_path: Path) -> None:
    """This machine's Fast DDS wheel has no security plugins: the runner must say so, not hang."""
    for spec in make_plan(bundle):
        (tmp_path / 'enclaves' / spec.namespace.strip('/') / spec.name).mkdir(parents=True)
    result = subprocess.run([AUTODICE, 'run', str(bundle), '--keystore', str(tmp_path),
                             '--namespace', '/autodice'], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert 'security' in (result.stdout + result.stderr).lower()


def test_a_board_not_started_is_named_by_the_links_it_leaves_unconnected(bundle: Path) -> None:
    """Only the first board runs: start-up fails after the timeout and says which link lacks what."""
    from pipeline_helpers import ros_node

    from autodice_ros.driver import PipelineDriver
    from autodice_ros.errors import AutodiceError
    from autodice_ros.manifest import load_bundle

    manifest = load_bundle(bundle).manifest
    first, second = manifest.boards
    crossing = [p.topic for p in manifest.partitions if p.board == first]   # read on the second
    namespace = '/runner_half'
    with ros_node('half_driver') as node, Runner(make_plan(bundle, PlanOptions(
            namespace=namespace, source='none', board=first))):
        driver = PipelineDriver(node, manifest, namespace)
        with pytest.raises(AutodiceError) as caught:
            driver.wait_connected(timeout=8.0)
    message = str(caught.value)
    assert 'did not connect within 8 s' in message
    assert f'{namespace}/{crossing[-1]}: 1 publisher(s), 0 of 1 reader(s)' in message, message
    assert 'no tail publishing it' in message, message     # the tail runs on the missing board

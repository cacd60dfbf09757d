"""pipeline.launch.py under the real launch/launch_ros: every node starts, works, and stops cleanly.

Uses the system's ``ros2 launch`` where a ROS 2 install provides one; otherwise the overlay that
the shared ``reallaunch`` tool builds over the Kilted wheels (built once, cached outside the
repository). Skips with the reason when neither is available.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pipeline_helpers import AUTODICE, ros_node, split

from autodice_ros.manifest import RESULT_TOPIC, load_bundle
from autodice_ros.rosutil import spin_until

REALLAUNCH_SRC = Path(os.environ.get('AUTODICE_REALLAUNCH_SRC', '/work/shared/tools/reallaunch'))
CACHE = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'autodice'


def launcher() -> list[str]:
    """The command prefix that runs ``ros2 launch``, building the overlay when needed."""
    if shutil.which('ros2'):
        return ['ros2', 'launch']
    if not (REALLAUNCH_SRC / 'setup.sh').is_file():
        pytest.skip(f'no ros2 command and no reallaunch tool at {REALLAUNCH_SRC} '
                    '(set AUTODICE_REALLAUNCH_SRC)')
    import hashlib

    tag = hashlib.sha256((REALLAUNCH_SRC / 'SOURCES.txt').read_bytes()).hexdigest()[:12]
    overlay = CACHE / f'reallaunch-{tag}'
    if not (overlay / 'env.sh').is_file():
        build = subprocess.run(['bash', str(REALLAUNCH_SRC / 'setup.sh'), str(overlay), 'python3.11'],
                               capture_output=True, text=True, timeout=900)
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    return ['bash', '-c', f'. "{overlay}/env.sh" "{overlay}" && exec python "{overlay}/bin/ros2-launch" "$@"',
            'ros2-launch']


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory, zoo_model: Callable[[str], Path]) -> Path:
    return split(zoo_model('squeezenet'), tmp_path_factory.mktemp('launch') / 'bundle', '--boards', '2')


def launch(bundle: Path, *args: str) -> subprocess.Popen[str]:
    """``ros2 launch autodice_ros pipeline.launch.py`` in the workspace environment, own session."""
    cmd = [AUTODICE, 'env', '--', *launcher(), 'autodice_ros', 'pipeline.launch.py',
           f'bundle:={bundle}', *args]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


def test_whole_pipeline_starts_runs_and_stops_cleanly(bundle: Path) -> None:
    from autodice_msgs.msg import Classification

    launcher()      # build or skip before starting anything
    ns = '/launch_all'
    proc = launch(bundle, f'namespace:={ns}', 'rate:=5')
    results: list[object] = []
    try:
        with ros_node('launch_listener') as node:
            node.create_subscription(Classification, f'{ns}/{RESULT_TOPIC}', results.append, 10)
            spin_until(node, lambda: len(results) >= 5 or proc.poll() is not None, timeout=90.0)
        assert proc.poll() is None, 'the launcher exited early'
    finally:
        out = stop(proc)
    assert len(results) >= 5, out
    names = ['image_source', 'camera_head', 'stage', 'tail']
    for name in names:
        assert f'[{name}' in out and 'process started with pid' in out, out
    nodes = 2 + len(load_bundle(bundle).manifest.partitions) + 1      # source, head, stages, tail
    assert out.count('process has finished cleanly') == nodes, out
    assert 'process has died' not in out, out
    assert proc.returncode == 0


def test_board_argument_starts_only_that_boards_nodes(bundle: Path) -> None:
    launcher()
    manifest = load_bundle(bundle).manifest
    last = manifest.partitions[-1]
    proc = launch(bundle, f'board:={last.board}', 'namespace:=/launch_board')
    try:
        with ros_node('launch_board_probe') as node:
            spin_until(node, lambda: proc.poll() is not None, timeout=8.0)
        assert proc.poll() is None
    finally:
        out = stop(proc)
    started = out.count('process started with pid')
    expected = sum(1 for p in manifest.partitions if p.board == last.board) + 1   # + tail
    assert started == expected, out
    assert 'camera_head' not in out and out.count('process has finished cleanly') == expected


def test_respawn_restarts_a_killed_stage(bundle: Path) -> None:
    launcher()
    last = load_bundle(bundle).manifest.partitions[-1]
    ns = '/launch_respawn'
    proc = launch(bundle, f'board:={last.board}', f'namespace:={ns}', 'respawn:=true')

    def stage_pids() -> list[int]:
        found = subprocess.run(['pgrep', '-f', f'__node:={last.name} .*__ns:={ns}'],
                               capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    try:
        with ros_node('launch_respawn_probe') as node:
            assert spin_until(node, lambda: bool(stage_pids()), timeout=30.0)
            first = stage_pids()
            os.kill(first[0], signal.SIGKILL)
            assert spin_until(node, lambda: bool(stage_pids()) and stage_pids() != first, timeout=15.0)
        assert proc.poll() is None, 'the launcher exited instead of respawning'
    finally:
        out = stop(proc)
    assert 'process has died' in out and out.count('[stage-') >= 2, out

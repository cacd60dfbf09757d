"""Helpers for the end-to-end tests: bundles from the real CLI, a driver node in this process."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autodice_ros.rosutil import spin_until

ROOT = Path(__file__).resolve().parents[1]
AUTODICE = str(ROOT / '.venv' / 'bin' / 'autodice')


def _netns_unavailable() -> str:
    from autodice_ros.boards import check_available
    from autodice_ros.errors import BoardsError

    if os.geteuid() != 0:
        return 'needs root (network namespaces, tc, cgroups)'
    if shutil.which('ip') is None:
        return 'needs iproute2 (`ip`)'
    try:
        check_available()
    except BoardsError as exc:
        return str(exc)
    return ''


needs_netns = pytest.mark.skipif(bool(_netns_unavailable()), reason=_netns_unavailable() or 'available')


def autodice(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; with ``check`` a failure shows its stderr."""
    result = subprocess.run([AUTODICE, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f'autodice {" ".join(args)}:\n{result.stdout}\n{result.stderr}'
    return result


def split(model: Path, out: Path, *how: str) -> Path:
    autodice('split', str(model), *how, '-o', str(out))
    return out


@contextmanager
def ros_node(name: str) -> Iterator[Any]:
    import rclpy

    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def synthetic_images(count: int, height: int = 240, width: int = 320, first_sec: int = 1000) -> list[Any]:
    """``count`` distinct camera frames with unique, increasing stamps."""
    from std_msgs.msg import Header

    from autodice_ros.nodes.image_source import synthetic_pattern, to_image_msg

    images = []
    for i in range(count):
        header = Header(frame_id='camera')
        header.stamp.sec, header.stamp.nanosec = first_sec + i // 10, (i % 10) * 100_000_000
        images.append(to_image_msg(synthetic_pattern(i, height, width), header))
    return images


def whole_model(model: Path, inputs: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    from autodice_ros.graph.model import data_inputs, load_model
    from autodice_ros.inference import create_session, run_session

    name = data_inputs(load_model(model))[0].name
    session, _ = create_session(model)
    return [run_session(session, {name: x}) for x in inputs]


class DiagnosticsWatch:
    """The latest /diagnostics values of every node, with the stamp of the report."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.node = node
        self.latest: dict[str, tuple[int, dict[str, str]]] = {}
        self._sub = node.create_subscription(DiagnosticArray, '/diagnostics', self._on, 50)

    def _on(self, msg: Any) -> None:
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        for status in msg.status:
            self.latest[status.name] = (stamp, {kv.key: kv.value for kv in status.values})

    def after(self, names: list[str], wall_ns: int, timeout: float = 10.0) -> dict[str, dict[str, str]]:
        """Each node's first report made after ``wall_ns`` (so it counts everything before it)."""
        def fresh() -> bool:
            return all(self.latest.get(n, (0, {}))[0] > wall_ns for n in names)

        assert spin_until(self.node, fresh, timeout, step=0.01), f'no fresh diagnostics from {names}'
        return {n: self.latest[n][1] for n in names}

    def until(self, name: str, done: Callable[[dict[str, str]], bool],
              timeout: float = 20.0) -> dict[str, str]:
        """``name``'s latest values once ``done(values)`` holds (or whatever came by ``timeout``)."""
        spin_until(self.node, lambda: name in self.latest and done(self.latest[name][1]), timeout)
        return self.latest.get(name, (0, {}))[1]

"""Start a plan's nodes as child processes and supervise them (``autodice run``).

The same :class:`~autodice_ros.plan.NodeSpec` list the launch file uses. Each child gets
``PR_SET_PDEATHSIG`` so it never outlives the runner, even after ``kill -9``. SIGINT/SIGTERM to
the runner stop every child (SIGINT, then SIGTERM, then SIGKILL after ``stop_timeout``) and reap
them all. A child that dies is restarted when the policy says so; otherwise the runner stops the
rest and exits non-zero.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from autodice_ros.plan import NodeSpec

RESTART_POLICIES = ('never', 'on-failure')
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a process from /proc (0 when it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def node_command(spec: NodeSpec) -> list[str]:
    return [sys.executable, '-m', f'autodice_ros.nodes.{spec.executable}', *spec.ros_arguments()]


@dataclass
class Child:
    spec: NodeSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)


class Runner:
    def __init__(self, specs: Sequence[NodeSpec], restart: str = 'never', max_restarts: int = 5,
                 stop_timeout: float = 5.0, log: Callable[[str], None] | None = None) -> None:
        if restart not in RESTART_POLICIES:
            raise ValueError(f'restart policy {restart!r}: expected one of {", ".join(RESTART_POLICIES)}')
        self.children = [Child(spec) for spec in specs]
        self.restart = restart
        self.max_restarts = max_restarts
        self.stop_timeout = stop_timeout
        self._log = log or (lambda text: print(f'[autodice run] {text}', file=sys.stderr, flush=True))
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **child.spec.env}
        child.process = subprocess.Popen(node_command(child.spec), env=env, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        self._log(f'started {child.spec.namespace}/{child.spec.name} ({child.spec.executable}, '
                  f'board {child.spec.board}) pid {child.process.pid}')

    def pid(self, name: str) -> int:
        for child in self.children:
            if child.spec.name == name and child.process is not None:
                return child.process.pid
        raise KeyError(name)

    def peak_rss(self) -> dict[str, int]:
        """Peak resident set size (bytes, VmHWM) of every live child, by node name."""
        peaks = {}
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                peaks[child.spec.name] = peak_rss_bytes(child.process.pid)
        return peaks

    def poll(self) -> int | None:
        """One supervision step: None while running, else the exit status the runner should give."""
        for child in self.children:
            assert child.process is not None
            code = child.process.poll()
            if code is None or self._stopping:
                continue
            child.exits.append(code)
            name = f'{child.spec.namespace}/{child.spec.name}'
            if self.restart == 'on-failure' and code != 0 and child.restarts < self.max_restarts:
                child.restarts += 1
                self._log(f'{name} exited with {code}; restart {child.restarts}/{self.max_restarts}')
                self._spawn(child)
                continue
            self._log(f'{name} exited with {code}; stopping the other nodes')
            return code or 1
        return None

    def stop(self) -> None:
        """SIGINT every child, escalate after ``stop_timeout``, reap all (no zombies)."""
        self._stopping = True
        live = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.stop_timeout
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in live:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            live = [p for p in live if p.poll() is None]
            for proc in live:
                self._log(f'pid {proc.pid} did not stop in time; sending {sig.name}')
                proc.send_signal(sig)
            deadline = time.monotonic() + 2.0
        for proc in live:
            proc.wait()

    # -- the blocking loop of ``autodice run`` ---------------------------------------------------

    def run(self, duration: float = 0.0) -> int:
        """Supervise until a signal, a fatal child exit, or ``duration`` seconds (0: forever)."""
        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            end = time.monotonic() + duration if duration else None
            while True:
                if received:
                    self._log(f'{signal.Signals(received[0]).name}: stopping every node')
                    status = 0
                    break
                status_or_none = self.poll()
                if status_or_none is not None:
                    status = status_or_none
                    break
                if end is not None and time.monotonic() >= end:
                    status = 0
                    break
                time.sleep(0.1)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

"""Start a plan's nodes as child processes and supervise them (``autodice run``).

The same :class:`~autodice_ros.plan.NodeSpec` list the launch file uses. Each child gets
``PR_SET_PDEATHSIG`` so it never outlives the runner, even after ``kill -9``. SIGINT/SIGTERM to
the runner stop every child (SIGINT, then SIGTERM, then SIGKILL after ``stop_timeout``) and reap
them all. A child that dies is restarted when the policy says so; otherwise the runner stops the
rest and exits non-zero. A killed child leaves its Fast DDS shared memory behind (its segment and
listening ports in /dev/shm): the runner removes such leftovers before it starts the
nodes, before each restart and after the last node has stopped (:mod:`autodice_ros.ddsshm`).

With restarts on, the runner keeps a warm spare per process environment
(:mod:`autodice_ros.nodes.spare`): already imported and discovered, it becomes the failed node,
which cuts a restart's outage to the node's own configuration. A new spare starts a second
later, once the restarted node has had the CPU it needs to start.
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

from autodice_ros import ddsshm
from autodice_ros.nodes import spare
from autodice_ros.plan import NodeSpec

RESTART_POLICIES = ('never', 'on-failure')
SPARE_DELAY_S = 1.0        # after a spare is used, before the next one starts competing for CPU
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


def _adoptable(spec: NodeSpec) -> bool:
    return spec.executable in spare.ADOPTABLE and not spec.enclave


def _env_key(spec: NodeSpec) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(spec.env.items()))


@dataclass
class Child:
    spec: NodeSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)


class Runner:
    def __init__(self, specs: Sequence[NodeSpec], restart: str = 'never', max_restarts: int = 5,
                 stop_timeout: float = 5.0, log: Callable[[str], None] | None = None,
                 spares: bool = True) -> None:
        if restart not in RESTART_POLICIES:
            raise ValueError(f'restart policy {restart!r}: expected one of {", ".join(RESTART_POLICIES)}')
        self.children = [Child(spec) for spec in specs]
        self.restart = restart
        self.max_restarts = max_restarts
        self.stop_timeout = stop_timeout
        self._log = log or (lambda text: print(f'[autodice run] {text}', file=sys.stderr, flush=True))
        self._stopping = False
        # warm spares by process environment, and when to start the missing ones
        self._spares: dict[tuple[tuple[str, str], ...], subprocess.Popen[bytes]] = {}
        self._spares_due: dict[tuple[tuple[str, str], ...], float] = {}
        if spares and restart != 'never':
            self._spares_due = {_env_key(c.spec): 0.0 for c in self.children if _adoptable(c.spec)}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._reap_dds_leftovers()
        for child in self.children:
            self._spawn(child)
        self._start_due_spares()

    def _spawn(self, child: Child) -> None:
        process = self._hand_to_spare(child.spec)
        how = 'handed to the warm spare' if process is not None else 'started'
        if process is None:
            env = {**os.environ, **child.spec.env}
            process = subprocess.Popen(node_command(child.spec), env=env, preexec_fn=_die_with_parent)
        child.process = process
        child.started_at = time.monotonic()
        self._log(f'{how} {child.spec.namespace}/{child.spec.name} ({child.spec.executable}, '
                  f'board {child.spec.board}) pid {process.pid}')

    def _hand_to_spare(self, spec: NodeSpec) -> subprocess.Popen[bytes] | None:
        """The spare waiting with this node's environment, now becoming the node; None: start cold."""
        key = _env_key(spec)
        warm = self._spares.pop(key, None) if _adoptable(spec) else None
        if warm is None:
            return None
        self._spares_due[key] = time.monotonic() + SPARE_DELAY_S
        if warm.poll() is not None or warm.stdin is None:
            return None
        try:
            warm.stdin.write(spare.command_line(spec.executable, spec.ros_arguments()))
            warm.stdin.close()
        except OSError:           # the spare died meanwhile
            return None
        return warm

    def _start_due_spares(self) -> None:
        now = time.monotonic()
        for key, due in list(self._spares_due.items()):
            if due > now:
                continue
            del self._spares_due[key]
            self._spares[key] = subprocess.Popen(
                [sys.executable, '-m', 'autodice_ros.nodes.spare'], stdin=subprocess.PIPE,
                env={**os.environ, **dict(key)}, preexec_fn=_die_with_parent)

    def spare_pids(self) -> list[int]:
        """Process ids of the warm spares waiting to replace a failed node."""
        return [proc.pid for proc in self._spares.values() if proc.poll() is None]

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
        if not self._stopping:
            self._start_due_spares()
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
                self._reap_dds_leftovers()
                self._spawn(child)
                continue
            self._log(f'{name} exited with {code}; stopping the other nodes')
            return code or 1
        return None

    def stop(self) -> None:
        """SIGINT every child, escalate after ``stop_timeout``, reap all (no zombies)."""
        self._stopping = True
        live = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        live += [proc for proc in self._spares.values() if proc.poll() is None]
        self._spares.clear()
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
        self._reap_dds_leftovers()

    def _reap_dds_leftovers(self) -> None:
        removed = ddsshm.reap_zombies()
        if removed:
            self._log(f'removed {len(removed)} Fast DDS shared-memory files of dead processes '
                      'from /dev/shm')

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

"""Several boards on one machine: a network namespace, a shaped link and a cgroup per board.

A robot's boards talk over Ethernet and each has its own cores and memory. On one Linux host
(root, ``ip netns``, cgroup v1) :class:`Boards` builds that:

* one network namespace per board, ``adb-<instance>-<board>``, with ``lo`` and ``eth0`` (an
  address in :data:`SUBNET`, a multicast route for DDS discovery), plus one switch namespace,
  ``adb-<instance>``, holding a bridge with one veth port per board. Nothing is created in,
  routed to or visible from the root namespace: every packet stays inside namespaces made here.
  Fast DDS does not use shared memory across namespaces, so board-to-board tensors really cross
  the emulated wire.
* each board's link shaped with ``tc tbf`` at ``rate`` in both directions (board ``eth0`` egress =
  uplink; the switch port's egress = downlink), like a full-duplex switch port. Added delay needs
  ``sch_netem``, which this kernel lacks; a non-zero ``delay_ms`` is refused with that reason.
* a cgroup per board in the v1 ``cpu``, ``cpuacct`` and ``memory`` hierarchies: CPU quota
  (``cpu.cfs_quota_us`` over a 10 ms period; 0.5 = half a core) and memory limit
  (``memory.limit_in_bytes``; the kernel OOM-kills inside the board when it is exceeded).

:meth:`Boards.spawn` starts a process inside a board (namespace and cgroups, joined between fork
and exec); :meth:`Boards.start_pipeline` runs ``autodice run BUNDLE --board NAME`` on every board.
Counters for benchmarks and fault tests: CPU time (``cpuacct.usage``), peak memory
(``memory.max_usage_in_bytes``, page cache included), OOM kills (``memory.oom_control``), bytes
per link (``eth0`` counters); :meth:`Boards.link_down` / :meth:`Boards.link_up` pull and replug a
board's cable (its switch port). Leaving the ``with`` block, an exception or Ctrl-C removes every
namespace, veth, bridge and cgroup; :func:`cleanup` removes leftovers (e.g. after ``kill -9``) by
prefix.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from autodice_ros.errors import BoardsError

PREFIX = 'adb'
SUBNET = '10.213.0'            # /24 inside our namespaces only; the root namespace never sees it
NETNS_DIR = Path('/run/netns')
CGROUP_ROOT = Path('/sys/fs/cgroup')
CONTROLLERS = ('cpu', 'cpuacct', 'memory')
# A 10 ms period, not the kernel's 100 ms: with 100 ms a board at 0.5 core runs 50 ms then
# freezes 50 ms, and a publisher's send thread frozen right after a long inference added up to
# tens of ms to a 1 Gbit hop; a real half-speed core never stops a thread for that long.
CFS_PERIOD_US = 10_000
BOARD_IFACE = 'eth0'
BRIDGE = 'br0'
MIN_BURST = 32 * 1024          # bytes; tbf segments GSO packets larger than its burst
DISCOVERY_MODES = ('multicast', 'static')
_NAME = re.compile(r'^[A-Za-z0-9_]+$')
_INSTANCE = re.compile(r'^[a-z0-9]+$')
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1

# -- amounts -----------------------------------------------------------------------------------

_AMOUNT = re.compile(r'^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)(b|B|bit|bps)?\s*$')
_POWERS = {'': 0, 'k': 1, 'm': 2, 'g': 3, 't': 4}
UNSHAPED = ('unshaped', 'none', 'unlimited', '')


def _amount(text: str, what: str) -> tuple[float, str]:
    match = _AMOUNT.match(text)
    if not match or (match.group(3) and not match.group(2)):
        raise BoardsError(f'{what} {text!r}: expected a number with an optional unit '
                          f'(e.g. 1GiB, 512M, 100mbit, 1gbit)')
    number, prefix, binary, unit = match.groups()
    value = float(number) * (1024 if binary else 1000) ** _POWERS[prefix.lower()]
    if value <= 0:
        raise BoardsError(f'{what} {text!r}: must be positive')
    return value, unit or ''


def parse_rate(value: str | float | int | None, what: str = 'link rate') -> int | None:
    """A link rate in bits/s: ``100mbit``, ``1gbit``, ``1e9``; ``unshaped``/None: no shaping.

    Units follow tc: ``bit``/``bps`` suffixes and a plain number are bits per second; ``B``
    (``125MB``) is bytes per second.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in UNSHAPED):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    number, unit = _amount(value, what)
    return int(number * 8 if unit == 'B' else number)


def parse_bytes(value: str | float | int | None, what: str = 'size') -> int | None:
    """A size in bytes: ``1GiB``, ``512M``, ``1e9``; None/``unlimited``: no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in UNSHAPED):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    number, unit = _amount(value, what)
    return int(number / 8 if unit in ('bit', 'bps') else number)


def format_rate(bits: int | None) -> str:
    if bits is None:
        return 'unshaped'
    for div, unit in ((1e9, 'gbit'), (1e6, 'mbit'), (1e3, 'kbit')):
        if bits >= div and bits % div == 0:
            return f'{bits // int(div)}{unit}'
    return f'{bits}bit'


# -- specs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkSpec:
    """A board's full-duplex link to the switch."""

    rate: int | None = None          # bits/s; None: unshaped (veth speed)
    burst: int | None = None         # tbf bucket in bytes; None: max(1 ms at the rate, MIN_BURST)
    queue_ms: float = 50.0           # tbf latency: the longest a packet may wait in the queue
    delay_ms: float = 0.0            # needs sch_netem (absent here): refused when non-zero

    def tbf_args(self) -> list[str]:
        """``tc qdisc replace ... root`` arguments for this link ([] when unshaped)."""
        if self.rate is None:
            return []
        burst = self.burst or max(self.rate // 8 // 1000, MIN_BURST)
        return ['tbf', 'rate', f'{self.rate}bit', 'burst', str(burst), 'latency', f'{self.queue_ms:g}ms']

    def wire_seconds(self, nbytes: int) -> float:
        """Time ``nbytes`` of payload need on this link at its rate (0 when unshaped)."""
        return nbytes * 8 / self.rate if self.rate else 0.0


@dataclass(frozen=True)
class BoardSpec:
    name: str
    cpu: float | None = None         # cores; None: no quota
    memory: int | None = None        # bytes; None: no limit
    link: LinkSpec = LinkSpec()


@dataclass(frozen=True)
class BoardsSpec:
    boards: tuple[BoardSpec, ...]
    discovery: str = 'multicast'     # or 'static': ROS_STATIC_PEERS = every other board

    def __post_init__(self) -> None:
        names = [b.name for b in self.boards]
        if not names:
            raise BoardsError('no boards given')
        if len(set(names)) != len(names):
            raise BoardsError(f'board names are not unique: {", ".join(names)}')
        for name in names:
            if not _NAME.match(name):
                raise BoardsError(f'board {name!r}: names may hold letters, digits and _ only')
        if self.discovery not in DISCOVERY_MODES:
            raise BoardsError(f'discovery {self.discovery!r}: expected one of {", ".join(DISCOVERY_MODES)}')
        if len(names) > 250:
            raise BoardsError(f'{len(names)} boards: at most 250 fit the /24 subnet')

    def board(self, name: str) -> BoardSpec:
        for board in self.boards:
            if board.name == name:
                return board
        raise BoardsError(f'no board {name!r} (boards: {", ".join(b.name for b in self.boards)})')

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.boards)

    def with_link(self, link: LinkSpec) -> BoardsSpec:
        return replace(self, boards=tuple(replace(b, link=link) for b in self.boards))


def config_file(name: str) -> Path:
    """A shipped config file: the installed share dir, else the repository's ``config/``."""
    from autodice_ros.environment import config_dir

    for directory in (config_dir(), Path(__file__).resolve().parents[3] / 'config'):
        if (directory / name).is_file():
            return directory / name
    return Path(__file__).resolve().parents[3] / 'config' / name


DEFAULT_CONFIG = 'boards.yaml'


def _board_from(name: str, data: Mapping[str, Any], base: BoardSpec, where: str) -> BoardSpec:
    known = {'cpu', 'memory', 'link', 'burst', 'queue_ms', 'delay_ms'}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BoardsError(f'{where}: unknown field(s) {", ".join(unknown)} '
                          f'(known: {", ".join(sorted(known))})')
    link = base.link
    if 'link' in data:
        link = replace(link, rate=parse_rate(data['link'], f'{where}: link'))
    if 'burst' in data:
        link = replace(link, burst=parse_bytes(data['burst'], f'{where}: burst'))
    if 'queue_ms' in data:
        link = replace(link, queue_ms=float(data['queue_ms']))
    if 'delay_ms' in data:
        link = replace(link, delay_ms=float(data['delay_ms']))
    cpu = base.cpu
    if 'cpu' in data:
        cpu = None if data['cpu'] is None else float(data['cpu'])
        if cpu is not None and cpu <= 0:
            raise BoardsError(f'{where}: cpu {cpu}: must be positive (cores)')
    memory = parse_bytes(data['memory'], f'{where}: memory') if 'memory' in data else base.memory
    return BoardSpec(name, cpu, memory, link)


def load_spec(path: Path | None, names: Sequence[str] = (), overrides: Mapping[str, Any] | None = None,
              discovery: str | None = None) -> BoardsSpec:
    """Boards from a YAML file (``defaults`` + ``boards``) and/or flags.

    ``names`` picks the boards (e.g. a bundle's); a name the file does not list gets the
    defaults. ``overrides`` (``cpu``, ``memory``, ``link``, ... as in the file) apply to every
    board last, the way command-line flags override a config file.
    """
    import yaml

    data: dict[str, Any] = {}
    where = str(path) if path is not None else 'flags'
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise BoardsError(f'{path}: cannot read the boards file: {exc.strerror}') from exc
        except yaml.YAMLError as exc:
            raise BoardsError(f'{path}: not valid YAML: {exc}') from exc
        if not isinstance(loaded, dict):
            raise BoardsError(f'{path}: expected a mapping with defaults/boards/discovery')
        data = loaded
        unknown = sorted(set(data) - {'defaults', 'boards', 'discovery'})
        if unknown:
            raise BoardsError(f'{path}: unknown top-level field(s) {", ".join(unknown)}')
    default = _board_from('defaults', data.get('defaults') or {}, BoardSpec('defaults'), f'{where}: defaults')
    listed = data.get('boards') or {}
    if not isinstance(listed, dict):
        raise BoardsError(f'{where}: boards: expected a mapping of board name -> settings')
    chosen = list(names) or list(listed)
    if not chosen:
        raise BoardsError(f'{where}: no boards listed and none given')
    boards = []
    for name in chosen:
        board = _board_from(name, listed.get(name) or {}, replace(default, name=name),
                            f'{where}: boards.{name}')
        if overrides:
            board = _board_from(name, overrides, board, 'flags')
        boards.append(board)
    return BoardsSpec(tuple(boards), discovery or str(data.get('discovery', 'multicast')))


# -- host checks and shell-outs -----------------------------------------------------------------

def check_available() -> None:
    """Raise :class:`BoardsError` (one line) unless this host can emulate boards."""
    if os.geteuid() != 0:
        raise BoardsError('board emulation needs root (network namespaces, tc, cgroups); run as root')
    if shutil.which('ip') is None or shutil.which('tc') is None:
        raise BoardsError('board emulation needs iproute2 (`ip`, `tc`): not found on PATH')
    probe = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True)
    if probe.returncode != 0:
        raise BoardsError(f'`ip netns` is unavailable here: {probe.stderr.strip() or probe.returncode}')
    for controller in CONTROLLERS:
        if not (CGROUP_ROOT / controller / 'cgroup.procs').is_file():
            raise BoardsError(f'{CGROUP_ROOT / controller}: cgroup v1 controller {controller!r} '
                              f'is not mounted')


def _run(*cmd: str, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise BoardsError(f'`{" ".join(cmd)}` failed: {result.stderr.strip() or result.returncode}')
    return result.stdout


def _write(path: Path, value: str | int) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        raise BoardsError(f'{path}: cannot write {value!r}: {exc.strerror}') from exc


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def netns_list() -> list[str]:
    out = _run('ip', 'netns', 'list', check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ours(name: str, instance: str | None = None) -> bool:
    """Is ``name`` (a namespace or cgroup) one this module made (of ``instance``)?"""
    if instance is None:
        return name.startswith(f'{PREFIX}-')
    return name == f'{PREFIX}-{instance}' or name.startswith(f'{PREFIX}-{instance}-')


def _status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith(f'{field_name}:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a process: its peak resident set (0 when it is gone)."""
    return _status_kib(pid, 'VmHWM')


def rss_bytes(pid: int) -> int:
    """VmRSS of a process: its resident set now (0 when it is gone)."""
    return _status_kib(pid, 'VmRSS')


def _netns_pids(name: str) -> list[int]:
    return [int(p) for p in _run('ip', 'netns', 'pids', name, check=False).split() if p.isdigit()]


def _cgroup_pids(name: str) -> list[int]:
    pids: set[int] = set()
    for controller in CONTROLLERS:
        try:
            text = (CGROUP_ROOT / controller / name / 'cgroup.procs').read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return sorted(pids)


def _kill_all(pids: Callable[[], list[int]], timeout: float) -> None:
    """SIGTERM, then SIGKILL, every pid ``pids()`` lists until it lists none (or timeout)."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        live = pids()
        if not live:
            return
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return
            sig, deadline = signal.SIGKILL, time.monotonic() + 2.0
        time.sleep(0.1)


def _rmdir_cgroup(name: str, timeout: float = 5.0) -> list[str]:
    """Remove ``name`` from every controller; returns the paths that would not go."""
    left = []
    for controller in CONTROLLERS:
        path = CGROUP_ROOT / controller / name
        deadline = time.monotonic() + timeout
        while path.exists():
            try:
                path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    left.append(str(path))
                    break
                time.sleep(0.1)
    return left


def leftovers(instance: str | None = None) -> tuple[list[str], list[str]]:
    """(namespaces, cgroup names) this module made that exist now."""
    spaces = [n for n in netns_list() if ours(n, instance)]
    groups: set[str] = set()
    for controller in CONTROLLERS:
        root = CGROUP_ROOT / controller
        if root.is_dir():
            groups.update(p.name for p in root.iterdir() if p.is_dir() and ours(p.name, instance))
    return spaces, sorted(groups)


def cleanup(instance: str | None = None, log: Callable[[str], None] | None = None) -> list[str]:
    """Kill what runs in our namespaces/cgroups, delete them; returns what was removed.

    Safe to call any time: it only touches names with this module's prefix (of ``instance``).
    """
    say = log or (lambda text: None)
    spaces, groups = leftovers(instance)
    removed = []
    for group in groups:
        _kill_all(partial(_cgroup_pids, group), timeout=3.0)
    for space in spaces:
        _kill_all(partial(_netns_pids, space), timeout=3.0)
    # boards before switches, so no veth outlives its bridge for a moment
    for space in sorted(spaces, key=lambda n: -n.count('-')):
        _run('ip', 'netns', 'del', space, check=False)
        removed.append(f'netns {space}')
        say(f'deleted network namespace {space}')
    for group in groups:
        stuck = _rmdir_cgroup(group)
        if stuck:
            raise BoardsError(f'cgroup {", ".join(stuck)} still has processes; could not remove it')
        removed.append(f'cgroup {group}')
        say(f'removed cgroup {group}')
    still, _ = leftovers(instance)
    if still:
        raise BoardsError(f'network namespace(s) {", ".join(still)} could not be deleted')
    return removed


# -- counters ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkCounters:
    """Bytes and packets through a board's ``eth0`` (tx = uplink, rx = downlink)."""

    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    rx_packets: int = 0

    def __sub__(self, other: LinkCounters) -> LinkCounters:
        return LinkCounters(self.tx_bytes - other.tx_bytes, self.rx_bytes - other.rx_bytes,
                            self.tx_packets - other.tx_packets, self.rx_packets - other.rx_packets)


@dataclass(frozen=True)
class BoardUsage:
    """A snapshot of one board's counters."""

    cpu_seconds: float               # cpuacct.usage: CPU time of every task in the board
    throttled_seconds: float         # cpu.stat throttled_time: time the quota held the board back
    memory_bytes: int                # memory.usage_in_bytes now (page cache included)
    memory_peak_bytes: int           # memory.max_usage_in_bytes (page cache included)
    memory_failcnt: int              # times the limit was hit
    oom_kills: int                   # memory.oom_control oom_kill: tasks the OOM killer took
    link: LinkCounters
    rss_peak_bytes: dict[int, int] = field(default_factory=dict)   # pid -> VmHWM of live tasks
    rss_bytes: dict[int, int] = field(default_factory=dict)        # pid -> VmRSS of live tasks


# -- the boards -----------------------------------------------------------------------------------

def _preexec(netns: Path, cgroup_procs: Sequence[Path]) -> Callable[[], None]:
    """Between fork and exec: die with the parent, join the board's cgroups and namespace."""
    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        pid = str(os.getpid()).encode()
        for procs in cgroup_procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        fd = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f'setns({netns})')
        finally:
            os.close(fd)
    return enter


class Boards:
    """Emulated boards for the time of a ``with`` block (root; see the module docstring).

    ``with Boards(spec) as boards: boards.spawn('board0', cmd)`` -- everything made is removed
    when the block ends, also on exceptions and Ctrl-C. ``instance`` keeps concurrent users
    apart (default: this process's id).
    """

    def __init__(self, spec: BoardsSpec, instance: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.instance = instance or f'p{os.getpid()}'
        if not _INSTANCE.match(self.instance):
            raise BoardsError(f'instance {self.instance!r}: lower-case letters and digits only')
        self._log = log or (lambda text: print(f'[autodice boards] {text}', file=sys.stderr, flush=True))
        self._procs: list[subprocess.Popen[Any]] = []
        self._up = False

    # -- names ---------------------------------------------------------------------------------

    @property
    def switch(self) -> str:
        return f'{PREFIX}-{self.instance}'

    def netns(self, board: str) -> str:
        self.spec.board(board)
        return f'{PREFIX}-{self.instance}-{board}'

    def cgroup(self, board: str) -> str:
        return self.netns(board)

    def port(self, board: str) -> str:
        """The board's veth end in the switch namespace (its switch port)."""
        return f'p{self.spec.names.index(board)}'

    def address(self, board: str) -> str:
        return f'{SUBNET}.{self.spec.names.index(board) + 1}'

    def _cg(self, controller: str, board: str) -> Path:
        return CGROUP_ROOT / controller / self.cgroup(board)

    # -- up / down -----------------------------------------------------------------------------

    def __enter__(self) -> Boards:
        self.up()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> None:
        """Create every namespace, link, qdisc and cgroup; on any failure remove them and raise."""
        check_available()
        for board in self.spec.boards:
            if board.link.delay_ms:
                raise BoardsError(f'board {board.name}: delay_ms {board.link.delay_ms:g} needs the '
                                  f'sch_netem qdisc, which this kernel does not have (tc: "Specified '
                                  f'qdisc kind is unknown"); emulate the rate only (tbf)')
        existing, _ = leftovers(self.instance)
        if existing:
            raise BoardsError(f'namespaces of instance {self.instance!r} exist already '
                              f'({", ".join(existing)}); run `autodice boards down`')
        self._up = True
        try:
            self._make_switch()
            for board in self.spec.boards:
                self._make_board(board)
        except BaseException:
            self.down()
            raise
        self._log(f'{len(self.spec.boards)} board(s) up: ' + ', '.join(
            f'{b.name} {self.address(b.name)} ({self.describe(b)})' for b in self.spec.boards))

    @staticmethod
    def describe(board: BoardSpec) -> str:
        cpu = f'{board.cpu:g} core' if board.cpu else 'all cores'
        mem = f'{board.memory / 2**30:g} GiB' if board.memory else 'no memory limit'
        return f'{cpu}, {mem}, link {format_rate(board.link.rate)}'

    def _make_switch(self) -> None:
        ns = self.switch
        _run('ip', 'netns', 'add', ns)
        _run('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        _run('ip', '-n', ns, 'link', 'add', BRIDGE, 'type', 'bridge', 'mcast_snooping', '0')
        _run('ip', '-n', ns, 'link', 'set', BRIDGE, 'up')

    def _make_board(self, board: BoardSpec) -> None:
        ns, port = self.netns(board.name), self.port(board.name)
        _run('ip', 'netns', 'add', ns)
        _run('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        _run('ip', '-n', self.switch, 'link', 'add', port, 'type', 'veth',
             'peer', 'name', BOARD_IFACE, 'netns', ns)
        _run('ip', '-n', self.switch, 'link', 'set', port, 'master', BRIDGE)
        _run('ip', '-n', self.switch, 'link', 'set', port, 'up')
        _run('ip', '-n', ns, 'addr', 'add', f'{self.address(board.name)}/24', 'dev', BOARD_IFACE)
        _run('ip', '-n', ns, 'link', 'set', BOARD_IFACE, 'up')
        _run('ip', '-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', BOARD_IFACE)
        self.set_link(board.name, board.link)
        for controller in CONTROLLERS:
            path = self._cg(controller, board.name)
            try:
                path.mkdir()
            except OSError as exc:
                raise BoardsError(f'{path}: cannot create the cgroup: {exc.strerror}') from exc
        if board.cpu:
            _write(self._cg('cpu', board.name) / 'cpu.cfs_period_us', CFS_PERIOD_US)
            _write(self._cg('cpu', board.name) / 'cpu.cfs_quota_us', int(board.cpu * CFS_PERIOD_US))
        if board.memory:
            _write(self._cg('memory', board.name) / 'memory.limit_in_bytes', board.memory)

    def down(self) -> None:
        """Stop every process started here, then delete namespaces, veths, bridge, cgroups."""
        if not self._up:
            return
        stop_all(self._procs, timeout=5.0)
        self._procs = []
        cleanup(self.instance)
        self._up = False
        self._log(f'boards of instance {self.instance} removed')

    # -- links ---------------------------------------------------------------------------------

    def set_link(self, board: str, link: LinkSpec) -> None:
        """(Re)shape a board's link in both directions; ``rate=None`` removes the shaping."""
        if link.delay_ms:
            raise BoardsError(f'board {board}: link delay needs sch_netem, absent on this kernel')
        for ns, dev in ((self.netns(board), BOARD_IFACE), (self.switch, self.port(board))):
            args = link.tbf_args()
            if args:
                _run('tc', '-n', ns, 'qdisc', 'replace', 'dev', dev, 'root', *args)
            else:
                _run('tc', '-n', ns, 'qdisc', 'del', 'dev', dev, 'root', check=False)
        specs = tuple(replace(b, link=link) if b.name == board else b for b in self.spec.boards)
        self.spec = replace(self.spec, boards=specs)

    def set_links(self, link: LinkSpec) -> None:
        for name in self.spec.names:
            self.set_link(name, link)

    def link_down(self, board: str) -> None:
        """Pull the board's cable: its switch port goes down (its eth0 loses carrier)."""
        _run('ip', '-n', self.switch, 'link', 'set', self.port(board), 'down')

    def link_up(self, board: str) -> None:
        _run('ip', '-n', self.switch, 'link', 'set', self.port(board), 'up')

    def link_counters(self, board: str) -> LinkCounters:
        data = json.loads(_run('ip', '-n', self.netns(board), '-j', '-s', 'link', 'show', 'dev', BOARD_IFACE))
        stats = data[0]['stats64']
        return LinkCounters(int(stats['tx']['bytes']), int(stats['rx']['bytes']),
                            int(stats['tx']['packets']), int(stats['rx']['packets']))

    # -- cgroups -------------------------------------------------------------------------------

    def pids(self, board: str) -> list[int]:
        return _cgroup_pids(self.cgroup(board))

    def oom_kills(self, board: str) -> int:
        try:
            text = (self._cg('memory', board) / 'memory.oom_control').read_text()
        except OSError:
            return 0
        values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(values.get('oom_kill', 0))

    def memory_stat(self, board: str) -> dict[str, int]:
        """The board's ``memory.stat`` (cgroup v1): anon (``total_rss``), page cache, shared memory,
        file pages read back after the limit pushed them out (``total_workingset_refault_file``)."""
        try:
            text = (self._cg('memory', board) / 'memory.stat').read_text()
        except OSError:
            return {}
        return {key: int(value) for key, value in (line.split() for line in text.splitlines())}

    def usage(self, board: str) -> BoardUsage:
        mem = self._cg('memory', board)
        try:
            text = (self._cg('cpu', board) / 'cpu.stat').read_text()
            stat = dict(line.split() for line in text.splitlines())
        except (OSError, ValueError):
            stat = {}
        return BoardUsage(
            cpu_seconds=_read_int(self._cg('cpuacct', board) / 'cpuacct.usage') / 1e9,
            throttled_seconds=int(stat.get('throttled_time', 0)) / 1e9,
            memory_bytes=_read_int(mem / 'memory.usage_in_bytes'),
            memory_peak_bytes=_read_int(mem / 'memory.max_usage_in_bytes'),
            memory_failcnt=_read_int(mem / 'memory.failcnt'),
            oom_kills=self.oom_kills(board),
            link=self.link_counters(board),
            rss_peak_bytes={pid: peak_rss_bytes(pid) for pid in self.pids(board)},
            rss_bytes={pid: rss_bytes(pid) for pid in self.pids(board)})

    def reset_peaks(self, board: str) -> None:
        """Start a new peak: ``memory.max_usage_in_bytes`` and ``failcnt`` back to now."""
        mem = self._cg('memory', board)
        _write(mem / 'memory.max_usage_in_bytes', 0)
        _write(mem / 'memory.failcnt', 0)

    # -- processes -----------------------------------------------------------------------------

    def env(self, board: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A process environment for ``board``: the ROS default discovery range (SUBNET) --
        allowed here because the subnet is ours -- and, with static discovery, the peers."""
        env = dict(os.environ if base is None else base)
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SUBNET'
        if self.spec.discovery == 'static':
            env['ROS_STATIC_PEERS'] = ';'.join(self.address(b) for b in self.spec.names if b != board)
        else:
            env.pop('ROS_STATIC_PEERS', None)
        return env

    def spawn(self, board: str, cmd: Sequence[str], env: Mapping[str, str] | None = None,
              limits: bool = True, stdin: int | IO[Any] | None = None,
              stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None,
              text: bool = False) -> subprocess.Popen[Any]:
        """Start ``cmd`` in ``board``'s namespace and, with ``limits``, its cgroups.

        ``env`` defaults to :meth:`env`. The process dies with this one (PDEATHSIG) and is
        stopped by :meth:`down`. ``limits=False`` is for harness processes (a benchmark's camera
        driver) that share the board's network but must not eat its CPU or memory budget.
        """
        if not self._up:
            raise BoardsError('boards are not up (use `with Boards(spec) as boards:`)')
        procs = [self._cg(c, board) / 'cgroup.procs' for c in CONTROLLERS] if limits else []
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else self.env(board),
                                preexec_fn=_preexec(NETNS_DIR / self.netns(board), procs),
                                start_new_session=True, stdin=stdin, stdout=stdout, stderr=stderr,
                                text=text)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
        """Stop one process started here (see :func:`stop_all`); returns its exit status."""
        stop_all([proc], timeout)
        return proc.wait()

    def start_pipeline(self, bundle: Path, run_args: Sequence[str] = (),
                       stdout: int | IO[Any] | None = None,
                       stderr: int | IO[Any] | None = None) -> dict[str, subprocess.Popen[Any]]:
        """``autodice run BUNDLE --board NAME`` inside every board that has a partition.

        A bundle that spans boards runs with ``--transport network`` on every node (unless
        ``run_args`` choose a transport): Fast DDS LARGE_DATA participants (the network profile)
        and UDP + shared-memory participants (the board profile) do not discover each other, so
        the plan's per-node choice would cut the camera head off from a first stage that has a
        link across. LARGE_DATA still uses shared memory between the nodes of one board and TCP
        across boards (:func:`pipeline_transport`).
        """
        from autodice_ros.manifest import load_bundle

        manifest = load_bundle(bundle).manifest
        missing = [b for b in manifest.boards if b not in self.spec.names]
        if missing:
            raise BoardsError(f'{bundle}: board(s) {", ".join(missing)} of the bundle are not '
                              f'emulated (boards: {", ".join(self.spec.names)})')
        args = list(run_args)
        if '--transport' not in args:
            args += ['--transport', pipeline_transport(manifest)]
        return {board: self.spawn(board, run_command(bundle, board, args), stdout=stdout, stderr=stderr)
                for board in manifest.boards}


def stop_all(procs: Sequence[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGINT every live process (``autodice run`` stops its nodes on it), SIGTERM after
    ``timeout``, SIGKILL 3 s later; all reaped."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            proc.send_signal(sig)
        deadline = time.monotonic() + wait
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for proc in procs:
        if proc.poll() is None:
            proc.wait()


def pipeline_transport(manifest: Any) -> str:
    """The DDS profile every node (and a driver) of ``manifest`` uses on emulated boards.

    Measured here (Fast DDS 3.2): a LARGE_DATA participant and a UDP + SHM participant never
    match, in one namespace or across; UDP across a 100 Mbit tbf link lost every 3.2 MB message
    to retransmission storms, while LARGE_DATA carried them at 1.07 x the wire time.
    """
    return 'network' if len(manifest.boards) > 1 else 'board'


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so ``with Boards(...)`` removes everything on
    ``kill`` and a closed terminal as it does on Ctrl-C (call it from the main thread)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def run_command(bundle: Path, board: str, run_args: Sequence[str] = ()) -> list[str]:
    """``autodice run BUNDLE --board NAME`` with this interpreter (the environment is inherited)."""
    return [sys.executable, '-m', 'autodice_ros', 'run', str(Path(bundle).resolve()),
            '--board', board, *run_args]


def _describe_qdisc(qdisc: Mapping[str, Any]) -> str:
    rate = qdisc.get('options', {}).get('rate')      # tc -j reports bytes per second
    return f"{qdisc['kind']} {format_rate(int(rate) * 8)}" if rate else str(qdisc['kind'])


def status(instance: str | None = None) -> Iterator[dict[str, Any]]:
    """What exists now, per namespace: addresses, link state, qdisc, counters, cgroup settings."""
    spaces, groups = leftovers(instance)
    for space in spaces:
        links = json.loads(_run('ip', '-n', space, '-j', '-s', 'addr', 'show', check=False) or '[]')
        qdiscs = json.loads(_run('tc', '-n', space, '-j', 'qdisc', 'show', check=False) or '[]')
        entry: dict[str, Any] = {'netns': space, 'pids': _netns_pids(space), 'links': [
            {'ifname': link['ifname'], 'state': link.get('operstate'),
             'addresses': [a['local'] for a in link.get('addr_info', []) if a.get('family') == 'inet'],
             'qdisc': next((_describe_qdisc(q) for q in qdiscs if q.get('dev') == link['ifname']
                            and q.get('root')), link.get('qdisc')),
             'tx_bytes': link.get('stats64', {}).get('tx', {}).get('bytes'),
             'rx_bytes': link.get('stats64', {}).get('rx', {}).get('bytes')}
            for link in links if link['ifname'] != 'lo']}
        if space in groups:
            cpu = CGROUP_ROOT / 'cpu' / space
            mem = CGROUP_ROOT / 'memory' / space
            quota = _read_int(cpu / 'cpu.cfs_quota_us', -1)
            period = _read_int(cpu / 'cpu.cfs_period_us', CFS_PERIOD_US)
            limit = _read_int(mem / 'memory.limit_in_bytes', -1)
            entry['cgroup'] = {
                'cpu_cores': quota / period if quota > 0 else None,
                'memory_limit': limit if limit < 2**62 else None,
                'memory_usage': _read_int(mem / 'memory.usage_in_bytes'),
                'memory_peak': _read_int(mem / 'memory.max_usage_in_bytes'),
                'cpu_seconds': _read_int(CGROUP_ROOT / 'cpuacct' / space / 'cpuacct.usage') / 1e9,
                'pids': _cgroup_pids(space)}
        yield entry
    for group in groups:
        if group not in spaces:
            yield {'cgroup_only': group, 'pids': _cgroup_pids(group)}

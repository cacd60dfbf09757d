"""The environment every autodice process needs, computed once, in one place.

On a robot the user sources ``install/setup.bash`` and nothing here is needed but the DDS
defaults. In this repository's own ``.venv`` nothing is sourced: ``.venv/bin/autodice`` sets
``AUTODICE_WORKSPACE`` and this module re-executes the interpreter once with the workspace's
paths (read from colcon's ``package.dsv`` hooks, the same data ``local_setup.sh`` uses), the
shipped Fast DDS profile and the malloc tunables. Children (nodes started by the runner) inherit
the result unchanged.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

WORKSPACE_VAR = 'AUTODICE_WORKSPACE'
READY_VAR = 'AUTODICE_ENV_READY'
PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'

# glibc returns the heap to the OS after every multi-MB message without these (3x slower hops).
MALLOC_TUNABLES = (
    'glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432'
)

# The shipped profiles, by the kind of link they serve (see config/README in the repository).
PROFILE_FILES = {
    'board': 'fastdds_board.xml',
    'network': 'fastdds_network.xml',
}


def config_dir(workspace: Path | None = None) -> Path:
    """Where the shipped config files are: the installed share dir, else the source tree."""
    if workspace is not None:
        installed = workspace / 'install' / 'autodice_ros' / 'share' / 'autodice_ros' / 'config'
        return installed if installed.is_dir() else workspace / 'config'
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('autodice_ros')) / 'config'
    except (ImportError, LookupError, OSError):  # not installed with ament: the repository layout
        return Path(__file__).resolve().parents[3] / 'config'


def profile_path(kind: str, workspace: Path | None = None) -> Path:
    """Path of the shipped Fast DDS profile for a link kind ('board' or 'network')."""
    if kind not in PROFILE_FILES:
        raise ValueError(f'unknown DDS profile kind {kind!r}; expected one of {sorted(PROFILE_FILES)}')
    return config_dir(workspace) / PROFILE_FILES[kind]


def _prepend(env: dict[str, str], var: str, values: Sequence[str]) -> None:
    parts = [p for p in env.get(var, '').split(os.pathsep) if p]
    new = [v for v in values if v not in parts]
    env[var] = os.pathsep.join(new + parts)


def _read_dsv(prefix: Path, dsv: Path, env_paths: dict[str, list[str]]) -> None:
    """Apply one colcon ``.dsv`` hook file (the subset colcon's ament/python packages write)."""
    for line in dsv.read_text().splitlines():
        kind, _, rest = line.partition(';')
        if kind == 'source':
            # shell hooks come with a .dsv twin; colcon's own setup utility reads that instead
            target = (prefix / rest).with_suffix('.dsv')
            if target.is_file() and target.resolve() != dsv.resolve():
                _read_dsv(prefix, target, env_paths)
        elif kind in ('prepend-non-duplicate', 'prepend-non-duplicate-if-exists'):
            var, _, value = rest.partition(';')
            for item in value.split(';'):
                path = prefix / item if item else prefix
                if kind.endswith('if-exists') and not path.exists():
                    continue
                env_paths.setdefault(var, [])
                if str(path) not in env_paths[var]:
                    env_paths[var].append(str(path))


def colcon_paths(install: Path) -> dict[str, list[str]]:
    """Path variables that sourcing ``install/local_setup.sh`` would prepend, by variable."""
    env_paths: dict[str, list[str]] = {}
    if not install.is_dir():
        return env_paths
    for pkg_dir in sorted(p for p in install.iterdir() if p.is_dir()):
        dsv = pkg_dir / 'share' / pkg_dir.name / 'package.dsv'
        if dsv.is_file():
            _read_dsv(pkg_dir, dsv, env_paths)
    return env_paths


def wheel_library_dirs() -> list[str]:
    """The ROS wheels' shared-library dirs (what ros_wheels_bootstrapper adds to LD_LIBRARY_PATH)."""
    site = Path(sysconfig.get_paths()['purelib'])
    return [str(Path(sys.prefix) / 'lib')] + sorted(str(p) for p in site.glob('ros_*.libs') if p.is_dir())


def dds_defaults(base: Mapping[str, str], workspace: Path | None = None) -> dict[str, str]:
    """DDS and malloc settings applied unless the user already chose their own."""
    env: dict[str, str] = {}
    if 'RMW_IMPLEMENTATION' not in base:
        env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    if PROFILE_VAR not in base and 'FASTRTPS_DEFAULT_PROFILES_FILE' not in base:
        env[PROFILE_VAR] = str(profile_path('board', workspace))
    if 'GLIBC_TUNABLES' not in base:
        env['GLIBC_TUNABLES'] = MALLOC_TUNABLES
    return env


def workspace_environment(workspace: Path, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the workspace's ROS paths, the wheels' libraries and the DDS defaults."""
    env = dict(base)
    paths = colcon_paths(workspace / 'install')
    paths.setdefault('LD_LIBRARY_PATH', [])
    paths['LD_LIBRARY_PATH'] += wheel_library_dirs()
    paths.setdefault('AMENT_PREFIX_PATH', []).append(sys.prefix)
    paths.setdefault('PATH', []).append(str(Path(sys.prefix) / 'bin'))
    for var, values in paths.items():
        _prepend(env, var, values)
    env.update(dds_defaults(base, workspace))
    env['_ROS_WHEELS_BOOTSTRAP_COMPLETE'] = '1'
    env[READY_VAR] = '1'
    return env


def reexec_if_needed(argv: Sequence[str]) -> None:
    """Re-execute this interpreter once with the workspace environment (``.venv/bin/autodice``)."""
    workspace = os.environ.get(WORKSPACE_VAR)
    if not workspace or os.environ.get(READY_VAR) == '1':
        return
    env = workspace_environment(Path(workspace), os.environ)
    os.execve(sys.executable, [sys.executable, *argv], env)

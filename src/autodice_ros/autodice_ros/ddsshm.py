"""Remove the shared-memory files a killed Fast DDS process leaves in /dev/shm.

A Fast DDS participant maps a segment (``fastdds_<16 hex>``, as large as the profile's
``segment_size``: 16 MiB with autodice's board profile) and listening ports
(``fastdds_port<N>``), each with a lock file (``..._el`` or ``..._sl``) that the owner holds with
``flock`` while it lives. A clean exit removes them; SIGKILL, an OOM kill or a crash does not.
/dev/shm is memory, so a robot whose stages are restarted after crashes loses a segment of RAM
per crash.

The test is the one ``fastdds shm clean`` uses: a lock file nobody holds belongs to a dead
owner. Files younger than ``min_age_s`` are left alone, so a participant that is being created
right now (file made, lock not yet taken) is never touched.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

SHM_DIR = Path('/dev/shm')
_LOCK = re.compile(r'^(fastdds_(?:[0-9a-f]{16}|port\d{1,5}))_(?:el|sl)$')


def _held(lock_file: Path) -> bool:
    """Whether a live process holds the lock (an owner keeps it for as long as it runs)."""
    try:
        with open(lock_file, 'ab') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:          # gone meanwhile, or not ours to open: leave it
        return True
    return False


def _companions(base: str) -> list[str]:
    """The files that go with a lock: the segment or port itself (+ a port's mutex)."""
    names = [base]
    if base.startswith('fastdds_port'):
        names.append(f'sem.{base}_mutex')
    return names


def reap_zombies(shm_dir: Path = SHM_DIR, min_age_s: float = 1.0) -> list[str]:
    """Unlink Fast DDS segments and ports whose owner died; returns the file names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = _LOCK.match(name)
        if match is None:
            continue
        lock_file = shm_dir / name
        try:
            if now - lock_file.stat().st_mtime < min_age_s:
                continue
        except OSError:
            continue
        if _held(lock_file):
            continue
        for victim in [*_companions(match.group(1)), name]:
            try:
                os.unlink(shm_dir / victim)
                removed.append(victim)
            except FileNotFoundError:
                pass
            except OSError:
                break        # another user's files: not ours to remove
    return removed


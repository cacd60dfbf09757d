"""Leftover Fast DDS shared memory is recognised by its unheld lock file, as Fast DDS does it."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from autodice_ros import ddsshm


def make(shm: Path, *names: str, age_s: float = 10.0) -> None:
    for name in names:
        (shm / name).write_bytes(b'x' * 4096)
        past = time.time() - age_s
        os.utime(shm / name, (past, past))


def test_only_segments_and_ports_with_an_unheld_lock_are_removed(tmp_path: Path) -> None:
    dead_segment, live_segment = 'fastdds_00aa11bb22cc33dd', 'fastdds_0123456789abcdef'
    make(tmp_path, dead_segment, f'{dead_segment}_el', live_segment, f'{live_segment}_el',
         'fastdds_port7411', 'fastdds_port7411_el', 'sem.fastdds_port7411_mutex',
         'fastdds_port7413', 'sem.fastdds_port7413_mutex',       # no lock file: cannot be judged
         'autodice_other', 'fastdds_not_a_segment_el')
    with open(tmp_path / f'{live_segment}_el', 'rb') as held:
        fcntl.flock(held, fcntl.LOCK_SH)                      # what a live participant keeps
        removed = ddsshm.reap_zombies(tmp_path)
        assert (tmp_path / live_segment).exists()
    assert sorted(removed) == sorted([dead_segment, f'{dead_segment}_el', 'fastdds_port7411',
                                      'fastdds_port7411_el', 'sem.fastdds_port7411_mutex'])
    assert sorted(os.listdir(tmp_path)) == sorted([
        live_segment, f'{live_segment}_el', 'fastdds_port7413', 'sem.fastdds_port7413_mutex',
        'autodice_other', 'fastdds_not_a_segment_el'])


def test_a_segment_being_created_right_now_is_left_alone(tmp_path: Path) -> None:
    make(tmp_path, 'fastdds_00aa11bb22cc33dd', 'fastdds_00aa11bb22cc33dd_el', age_s=0.0)
    assert ddsshm.reap_zombies(tmp_path, min_age_s=1.0) == []
    assert sorted(os.listdir(tmp_path)) == ['fastdds_00aa11bb22cc33dd',
                                          'fastdds_00aa11bb22cc33dd_el']
